;; Variables in frames and in the global environment. The compiler resolves
;; each variable once: to a frame slot (eval.c, "scopes") or to the symbol's
;; global binding cell. Here globals are used first as globals, then named
;; in a frame (a parameter, a rest parameter, a let, let* or letrec binding,
;; an internal define, a named let); every lookup and set! after that must
;; still find the right binding.
(define (show x) (write x) (newline))

;; a parameter
(define g 1)
(define (get-g) g)
(show (get-g))
(set! g 2)
(show g)
(define (shadow-param g) (set! g (+ g 10)) (list g (get-g)))
(show (shadow-param 5))               ; the parameter, set!; the global untouched
(show g)
(set! g 3)
(show (get-g))

;; a primitive's name as a parameter
(define (first-of list) (car list))
(show (first-of '(a b)))
(show (list 1 2))

;; a let binding
(define v 'global-v)
(define (get-v) v)
(show (get-v))
(show (let ((v 'let-v)) (set! v (list v 'set)) (list v (get-v))))
(show v)
(set! v 'global-v2)
(show (get-v))

;; let* and letrec bindings
(define w 100)
(show w)
(show (let* ((w (+ w 1)) (w (* w 2))) (set! w (+ w 1)) w))
(show w)
(define lr 'global-lr)
(show lr)
(show (letrec ((lr (lambda (n) (if (= n 0) 'done (lr (- n 1)))))) (lr 3)))
(show lr)

;; an internal define: before it the name is the global, after it the local
(define d 'global-d)
(define (get-d) d)
(show (get-d))
(define (inner tag)
  (define before d)
  (define d (list 'inner tag))
  (set! d (list d 'set))
  (list before d (get-d)))
(show (inner 1))
(show (inner 2))                      ; each call's frame starts without d
(show d)
(set! d 'global-d2)
(show (get-d))
(define (redefine-param p) (define p (* p 2)) p)
(show (redefine-param 21))

;; a set! in a function of a global that a let shadows around the call
(define counter 0)
(define (bump!) (set! counter (+ counter 1)))
(bump!)
(bump!)
(show counter)
(show (let ((counter 100)) (bump!) (set! counter (+ counter 1)) counter))
(show counter)

;; rest parameters: a dotted one, and a lone symbol
(define r 'global-r)
(define (get-r) r)
(show (get-r))
(define (rest-args a . r) (set! r (cons 'x r)) (list a r (get-r)))
(show (rest-args 1 2 3))
(show (rest-args 1))
(show r)
(define r2 'global-r2)
(show r2)
(show ((lambda r2 (set! r2 (length r2)) r2) 'a 'b 'c))
(show r2)

;; a named let: its name and its variables
(define count-up 'global-count-up)
(define k 'global-k)
(show (list count-up k))
(show (let count-up ((k 0) (acc '()))
        (if (= k 3)
            (begin (set! k 'done) (list (reverse acc) k))
            (count-up (+ k 1) (cons k acc)))))
(show (list count-up k))
(set! count-up 'set-global)
(show count-up)
(define nl 'global-nl)
(show (let nl ((n 0)) (if (< n 2) (nl (+ n 1)) (begin (set! nl n) nl))))
(show nl)

;; set! of something that is not a variable is an error
(set! 5 1)
(show 'after)
