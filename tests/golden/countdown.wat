;; The module behind the golden checkpoint (tests/golden/countdown-v1.ckpt):
;; counts down from 3000 through a recursive helper, printing every 250th
;; value, so a checkpoint taken mid-run holds real frames and output offsets.
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (global $total (mut i32) (i32.const 0))
  (func $print (param $n i32)
    (local $p i32)
    (local.set $p (i32.const 1100))
    (i32.store8 (local.get $p) (i32.const 10))
    (loop $digits
      (local.set $p (i32.sub (local.get $p) (i32.const 1)))
      (i32.store8 (local.get $p) (i32.add (i32.const 48) (i32.rem_u (local.get $n) (i32.const 10))))
      (local.set $n (i32.div_u (local.get $n) (i32.const 10)))
      (br_if $digits (local.get $n)))
    (i32.store (i32.const 1200) (local.get $p))
    (i32.store (i32.const 1204) (i32.sub (i32.const 1101) (local.get $p)))
    (drop (call $fd_write (i32.const 1) (i32.const 1200) (i32.const 1) (i32.const 1208))))
  (func $step (param $n i32)
    (global.set $total (i32.add (global.get $total) (local.get $n)))
    (if (i32.eqz (i32.rem_u (local.get $n) (i32.const 250)))
      (then (call $print (global.get $total))))
    (if (local.get $n) (then (call $step (i32.sub (local.get $n) (i32.const 1))))))
  (func (export "_start") (call $step (i32.const 3000))))
