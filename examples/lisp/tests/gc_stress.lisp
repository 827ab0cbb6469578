;; Live data survives many collections, whoever holds it: globals (a root
;; slot), closures' environments, the value stack (arguments being
;; evaluated), and C locals of the reader and evaluator (stack scanning).
;; A collection every 64 KiB of allocation (32 KiB on a generational heap), to
;; catch any unprotected pointer.
;; env: LOAM_OPTIONS=gc_min_bytes=65536,gc_young_min=32768
(define start (heap-stat 'collections))

(define (make-tree d) (if (= d 0) 'leaf (cons (make-tree (- d 1)) (make-tree (- d 1)))))
(define (tree-size t) (if (pair? t) (+ (tree-size (car t)) (tree-size (cdr t))) 1))
(define (garbage n) (if (= n 0) 0 (begin (make-tree 10) (garbage (- n 1)))))

;; a global tree, and trees held only by closures
(define kept (make-tree 12))
(define (holder d) (let ((t (make-tree d))) (lambda () (tree-size t))))
(define holders (map holder '(5 6 7 8 9 10)))
(garbage 300)
(display (tree-size kept)) (newline)
(display (map (lambda (h) (h)) holders)) (newline)

;; arguments already evaluated sit on the value stack while later ones
;; allocate (and collect)
(define (three a b c) (list (tree-size a) (tree-size b) (tree-size c)))
(display (three (make-tree 8) (begin (garbage 100) (make-tree 9))
                (begin (gc) (make-tree 10))))
(newline)

;; a long list built by non-tail recursion: the partial results live only
;; in C locals of nested calls of the evaluator (run)
(define (build n) (if (= n 0) '() (cons (make-tree 2) (build (- n 1)))))
(define (check l n) (if (null? l) n (check (cdr l) (+ n (tree-size (car l))))))
(display (check (build 5000) 0)) (newline)

;; strings, vectors and symbols made and dropped
(define (churn i v)
  (if (= i 0)
      v
      (begin
        (vector-set! v (remainder i (vector-length v))
                     (string-append "s" (number->string i)))
        (string->symbol (string-append "sym-" (number->string (remainder i 50))))
        (churn (- i 1) v))))
(define v (churn 50000 (make-vector 7 #f)))
(display v) (newline)
(display (eq? (string->symbol "sym-7") 'sym-7)) (newline)

;; a quoted constant in a procedure body stays as long as the procedure
(define (constant) '(1 2 (3 4) "five"))
(garbage 200)
(gc)
(write (constant)) (newline)

(display (> (heap-stat 'collections) (+ start 5))) (newline)
(display (< (heap-stat 'live-bytes) 8000000)) (newline)
