;; An error abandons the form being evaluated (and whatever it had pushed on
;; the value stack) and the interpreter goes on with the next form.
(car 1)
(display "after car") (newline)
undefined-variable
(set! also-undefined 1)
((lambda (x) x))
((lambda (x) x) 1 2)
(+ 1 "two")
(quotient 1 0)
(vector-ref (make-vector 2 0) 5)
(error "custom error" '(some data))
(42 1 2)
(* 4611686018427387903 2)
(if)
(define lst (list 1 2 3))
(display (+ 1 (car lst) (begin (error "in the middle of an argument list") 5))) (newline)
;; the value stack is back to where it was: later calls work
(display (map (lambda (x) (* 10 x)) lst)) (newline)
(display "end") (newline)
;; a syntax error ends the file
(display "never printed"
