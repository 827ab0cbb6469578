;; Tail calls run in constant C stack: a million-step loop, mutual recursion,
;; loops through cond, and, or, when, let and begin. Deep non-tail recursion
;; works to a generous depth, and past the limit it is an error, not a crash.
(define (count-down n) (if (= n 0) 'done (count-down (- n 1))))
(display (count-down 1000000)) (newline)

(define (my-even? n) (if (= n 0) #t (my-odd? (- n 1))))
(define (my-odd? n) (if (= n 0) #f (my-even? (- n 1))))
(display (my-even? 300001)) (newline)

(define (sum-to n acc)
  (cond ((= n 0) acc)
        (else (let ((next (- n 1)))
                (begin (sum-to next (+ acc n)))))))
(display (sum-to 1000000 0)) (newline)

(define (and-loop n) (and #t (or #f (if (= n 0) 'and-or-done (and-loop (- n 1))))))
(display (and-loop 500000)) (newline)

(define (when-loop n) (when #t (if (= n 0) 'when-done (when-loop (- n 1)))))
(display (when-loop 500000)) (newline)

(display (let loop ((i 0)) (if (< i 1000000) (loop (+ i 1)) i))) (newline)

;; apply from C is not a tail call, but the callee's own loop is
(display (apply count-down '(100000))) (newline)

;; non-tail recursion 10000 deep
(define (build n) (if (= n 0) '() (cons n (build (- n 1)))))
(display (length (build 10000))) (newline)

;; runaway recursion is caught
(define (runaway n) (+ 1 (runaway n)))
(runaway 0)
(display "still running") (newline)
