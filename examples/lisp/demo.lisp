;; demo.lisp — a workload that keeps the collector busy: it builds and drops
;; lists, trees, closures, strings and vectors, and keeps a few structures
;; alive throughout to check that the collector never frees a live object.
;; Run: build/examples/lisp examples/lisp/demo.lisp   (or: make demo)

(define (show label value)
  (display label) (display ": ") (display value) (newline))

;; ---- binary trees (the classic GC benchmark) --------------------------------
(define (make-tree depth)
  (if (= depth 0)
      (cons '() '())
      (cons (make-tree (- depth 1)) (make-tree (- depth 1)))))

(define (tree-size t)
  (if (null? (car t))
      1
      (+ 1 (tree-size (car t)) (tree-size (cdr t)))))

(define long-lived (make-tree 14))          ; survives every collection

(define (trees depth iterations)
  (let loop ((i 0) (total 0))
    (if (= i iterations)
        total
        (loop (+ i 1) (+ total (tree-size (make-tree depth)))))))

(show "trees of depth 4..12, nodes checked"
      (let loop ((d 4) (total 0))
        (if (> d 12)
            total
            (loop (+ d 2) (+ total (trees d (quotient 32768 (* d d))))))))

;; ---- lists: build, transform, drop -------------------------------------------
(define (square x) (* x x))
(define (list-work rounds)
  (let loop ((i 0) (acc 0))
    (if (= i rounds)
        acc
        (let* ((xs (iota 1000))
               (squares (map square xs))
               (evens (filter (lambda (x) (= 0 (remainder x 2))) squares)))
          (loop (+ i 1) (+ acc (fold + 0 evens)))))))
(show "sum of even squares below 1000, 100 times" (list-work 100))

;; ---- closures made in a loop --------------------------------------------------
(define (make-counter start)
  (let ((n start))
    (lambda () (set! n (+ n 1)) n)))

(define (compose f g) (lambda (x) (f (g x))))

(define (closure-work count)
  (let loop ((i 0) (sum 0))
    (if (= i count)
        sum
        (let ((counter (make-counter i))
              (add-then-double (compose (lambda (x) (* 2 x)) (lambda (x) (+ x i)))))
          (counter)
          (loop (+ i 1) (+ sum (counter) (add-then-double 1)))))))
(show "closures: sum over 50000 counters and compositions" (closure-work 50000))

;; ---- strings ------------------------------------------------------------------
(define (number-strings n)
  (let loop ((i 0) (longest ""))
    (if (= i n)
        longest
        (let ((s (string-append "item-" (number->string i) "-" (number->string (* i i)))))
          (loop (+ i 1) (if (> (string-length s) (string-length longest)) s longest))))))
(show "longest of 50000 strings" (number-strings 50000))

;; ---- a vector of lists, slots replaced at random --------------------------------
(define table (make-vector 512 '()))
(define seed 12345)
(define (random n)
  (set! seed (modulo (+ (* seed 1103515245) 12345) 2147483648))
  (modulo (quotient seed 65536) n))
(define (churn steps)
  (let loop ((i 0))
    (when (< i steps)
      (vector-set! table (random 512) (iota (+ 1 (random 40))))
      (loop (+ i 1)))))
(churn 40000)
(show "vector of lists, total length"
      (let loop ((i 0) (total 0))
        (if (= i 512) total (loop (+ i 1) (+ total (length (vector-ref table i)))))))

;; ---- a tail-recursive loop of a million steps ------------------------------------
(define (count-down n) (if (= n 0) 'done (count-down (- n 1))))
(show "a million tail calls" (count-down 1000000))

;; ---- finalizers and weak references ------------------------------------------------
(define kept (open-resource "kept"))
(define (open-and-drop n)
  (let loop ((i 0))
    (when (< i n)
      (let ((r (open-resource (string-append "scratch-" (number->string i)))))
        (when (= 0 (remainder i 2)) (close-resource r)))   ; half closed by hand
      (loop (+ i 1)))))
(open-and-drop 1000)
(define weak-to-live (make-weak long-lived))
(define weak-to-garbage (make-weak (make-tree 8)))
(gc)
(show "resources finalized (out of 500 left open)" (resources-finalized))
(show "kept resource" kept)
(show "weak ref to the live tree still set" (eq? (weak-get weak-to-live) long-lived))
(show "weak ref to a dropped tree cleared" (not (weak-get weak-to-garbage)))

(show "long-lived tree intact" (= (tree-size long-lived) (- (* 2 16384) 1)))
(show "collections so far" (> (heap-stat 'collections) 10))
