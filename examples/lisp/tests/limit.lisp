;; A heap limit: when live data outgrows it, the allocation collects, then
;; calls the oom callback, then fails; the interpreter turns that into an
;; error, the data becomes garbage, and the program goes on.
;; args: --limit=8M
(define (hog n acc) (if (= n 0) acc (hog (- n 1) (cons (make-vector 100 n) acc))))
(hog 1000000 '())
(display "recovered") (newline)
(define small (hog 1000 '()))                   ; fine again: the hog is garbage
(display (length small)) (newline)
(hog 1000000 '())
(display "recovered twice") (newline)
(display (> (heap-stat 'collections) 0)) (newline)
