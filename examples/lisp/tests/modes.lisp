;; Switching the heap between collected and manual (loam_heap_set_mode).
;; While manual, nothing is reclaimed and (gc) does nothing; back in
;; collected mode, the garbage made meanwhile is reclaimed.
(define (garbage n) (if (= n 0) 'done (begin (make-vector 60 n) (garbage (- n 1)))))
(gc)
(define base-live (heap-stat 'live-bytes))

(set-heap-mode! 'manual)
(define c0 (heap-stat 'collections))
(garbage 20000)                                 ; about 10 MB of garbage
(gc)
(display (= c0 (heap-stat 'collections))) (newline)
(display (> (heap-stat 'live-bytes) (+ base-live 5000000))) (newline)

(set-heap-mode! 'collected)
(gc)
(display (> (heap-stat 'collections) c0)) (newline)
(display (< (heap-stat 'live-bytes) (+ base-live 1000000))) (newline)

(garbage 20000)                                 ; collected as it goes
(display (< (heap-stat 'live-bytes) (+ base-live 8000000))) (newline)
(set-heap-mode! 'neither)
