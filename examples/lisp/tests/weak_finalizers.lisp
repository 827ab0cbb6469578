;; Weak references and finalizers, checked after (gc).
;; The C stack is scanned conservatively, so a dead object can now and then
;; be kept by a stale word: the checks on many objects allow a little slack.

;; ---- weak references ----
(define live (list 'still 'here))
(define w-live (make-weak live))
(define w-num (make-weak 42))                   ; immediates never die
(define w-sym (make-weak 'interned))            ; nor do interned symbols

(define (weak-garbage n acc)                    ; n weak refs to dropped lists
  (if (= n 0) acc (weak-garbage (- n 1) (cons (make-weak (list n n n)) acc))))
(define weaks (weak-garbage 200 '()))

(gc)
(display (eq? (weak-get w-live) live)) (newline)
(display (weak-get w-live)) (newline)
(display (list (weak-get w-num) (weak-get w-sym))) (newline)
(define (count-cleared l n) (if (null? l) n (count-cleared (cdr l) (if (weak-get (car l)) n (+ n 1)))))
(display (>= (count-cleared weaks 0) 190)) (newline)
(display (>= (heap-stat 'weak-cleared) 190)) (newline)

;; a weak ref does not keep its target: drop the last strong ref
(set! live #f)
(define (stack-noise n) (if (= n 0) 0 (+ 1 (stack-noise (- n 1)))))
(stack-noise 200)                               ; overwrite stale stack words
(gc)
(display (weak-get w-live)) (newline)

;; ---- finalizers: resources closed when dropped ----
(define kept (open-resource "kept"))
(define closed-by-hand (open-resource "by hand"))
(close-resource closed-by-hand)
(set! closed-by-hand #f)                        ; no finalizer left: not counted

(define (open-many n)
  (when (> n 0)
    (open-resource (string-append "temp-" (number->string n)))
    (open-many (- n 1))))
(open-many 100)
(gc)
(display (>= (resources-finalized) 95)) (newline)
(display (resource-open? kept)) (newline)
(write kept) (newline)

;; finalizers run once: more collections change nothing for the same objects
(define before (resources-finalized))
(gc) (gc)
(display (= before (resources-finalized))) (newline)

;; a resource reachable only from a closure stays open
(define reopen
  (let ((r (open-resource "in a closure")))
    (lambda () (resource-open? r))))
(open-many 10)
(gc)
(display (reopen)) (newline)
(display (>= (heap-stat 'finalizers-run) 100)) (newline)
