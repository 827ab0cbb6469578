;; Ephemerons (make-ephemeron key value): the value is kept only while the
;; key is reachable some other way; when the key dies both go, and the
;; ephemeron is broken (ephemeron-key and ephemeron-value give #f).
;; The C stack is scanned conservatively, so a dead object can now and then
;; be kept by a stale word: the checks on many objects allow a little slack.

(define key (list 'k))
(define e (make-ephemeron key (list 'value-of key)))
(gc)
(display (ephemeron-broken? e)) (newline)          ; the key is reachable
(display (ephemeron-value e)) (newline)
(display (eq? (ephemeron-key e) key)) (newline)

;; values that refer to their own keys do not keep them
(define (self-kept n acc)
  (if (= n 0)
      acc
      (self-kept (- n 1) (cons (let ((k (list n n))) (make-ephemeron k (cons 'of k))) acc))))
(define ephs (self-kept 200 '()))
(gc)
(define (count-broken l n)
  (if (null? l) n (count-broken (cdr l) (if (ephemeron-broken? (car l)) (+ n 1) n))))
(display (>= (count-broken ephs 0) 190)) (newline)
(display (>= (heap-stat 'ephemerons-cleared) 190)) (newline)

;; a chain: each key reachable only through the value of the one before
(define (chain n first)
  (let loop ((i 0) (k first) (acc '()))
    (if (= i n)
        acc
        (let ((next (list 'key (+ i 1))))
          (loop (+ i 1) next (cons (make-ephemeron k next) acc))))))
(define head (list 'key 0))
(define links (chain 100 head))                    ; the last link first
(gc)
(display (count-broken links 0)) (newline)         ; 0: all reachable from head
(display (ephemeron-value (car links))) (newline)  ; (key 100)

;; immediate keys never die; an immediate value goes with its key
(define e-imm (make-ephemeron 42 (list 'forty-two)))
(define (imm-values n acc)
  (if (= n 0) acc (imm-values (- n 1) (cons (make-ephemeron (list n) n) acc))))
(define imms (imm-values 100 '()))
(gc)
(display (ephemeron-value e-imm)) (newline)
(display (>= (count-broken imms 0) 95)) (newline)
(write e) (newline)
