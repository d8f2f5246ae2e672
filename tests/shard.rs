//! The sharded ops on a `LocalGroup` of 2, 3 and 4 ranks (threads), bit for bit the
//! unsharded seeded ops on the full weight restricted to each shard: rows and column
//! shards (even and uneven), every dtype, weight dropout, pruning, unit dropout and pruning,
//! N:M; forward and gradient; and the bad inputs, each an error on every rank.

use candle_core::{DType, Device, Result, Tensor, Var};
use candle_targeted_dropout::*;

/// Runs `f` on every rank of a `LocalGroup` of `world`, each in its thread; the results in
/// rank order.
fn on_ranks<T: Send>(world: usize, f: impl Fn(LocalGroup) -> Result<T> + Sync) -> Vec<Result<T>> {
    std::thread::scope(|s| {
        let handles: Vec<_> = LocalGroup::new(world)
            .into_iter()
            .map(|g| {
                let f = &f;
                s.spawn(move || f(g))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("no panic"))
            .collect()
    })
}

/// The raw bits of a float tensor, for exact comparisons (NaN payloads and -0.0 included).
fn bits(t: &Tensor) -> Vec<u64> {
    let t = t.flatten_all().unwrap();
    match t.dtype() {
        DType::F32 => t
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .map(|x| x.to_bits() as u64)
            .collect(),
        DType::F64 => t
            .to_vec1::<f64>()
            .unwrap()
            .iter()
            .map(|x| x.to_bits())
            .collect(),
        DType::F16 => t
            .to_vec1::<half::f16>()
            .unwrap()
            .iter()
            .map(|x| x.to_bits() as u64)
            .collect(),
        DType::BF16 => t
            .to_vec1::<half::bf16>()
            .unwrap()
            .iter()
            .map(|x| x.to_bits() as u64)
            .collect(),
        dt => panic!("{dt:?}"),
    }
}

/// Seeded data with ties (quantized rows, ±0.0), NaN and infinities, and plain values.
fn weight(rows: usize, cols: usize, dtype: DType, seed: u64) -> Tensor {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let v: Vec<f32> = (0..rows * cols)
        .map(|i| {
            let r = next();
            match (i / cols) % 3 {
                // A row of heavy ties.
                0 => [0.0, -0.0, 0.25, -0.25, 1.0, 0.5][(r % 6) as usize],
                // Specials now and then.
                1 if r % 29 == 0 => {
                    [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 1e-42][(r / 29 % 4) as usize]
                }
                _ => ((r % 2_000_001) as f32 / 1e6 - 1.0) * 3.0,
            }
        })
        .collect();
    Tensor::from_vec(v, (rows, cols), &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

/// The shards of a split: even (the first ranks one longer) or deliberately uneven.
fn split(dim: ShardDim, full: (usize, usize), world: usize, uneven: bool) -> Vec<(Shard, usize)> {
    let extent = match dim {
        ShardDim::Rows => full.0,
        ShardDim::Cols => full.1,
    };
    if !uneven {
        return (0..world)
            .map(|r| {
                let s = Shard::even(dim, full, r, world).unwrap();
                (s, Shard::even_len(dim, full, r, world))
            })
            .collect();
    }
    // Lengths 1, 2, ..., the last rank the rest.
    let mut out = Vec::new();
    let mut start = 0;
    for r in 0..world {
        let len = if r + 1 == world {
            extent - start
        } else {
            (r + 1).min(extent - start)
        };
        out.push((Shard { dim, start, full }, len));
        start += len;
    }
    out
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Weight(f64, f64),
    PruneW(f64),
    Unit(f64, f64),
    PruneU(f64),
    Nm(usize, usize, f64),
}

const SEED: u64 = 0x5eed;
const OFFSET: u64 = 77;

fn unsharded(op: Op, w: &Tensor) -> Result<Tensor> {
    match op {
        Op::Weight(g, a) => targeted_weight_dropout_seeded(w, g, a, SEED, OFFSET),
        Op::PruneW(g) => prune_weights(w, g),
        Op::Unit(g, a) => targeted_unit_dropout_seeded(w, g, a, SEED, OFFSET),
        Op::PruneU(g) => prune_units(w, g),
        Op::Nm(n, m, a) => targeted_nm_dropout_seeded(w, n, m, a, SEED, OFFSET),
    }
}

fn sharded(op: Op, w: &Tensor, s: &Shard, comm: &dyn Collective) -> Result<Tensor> {
    match op {
        Op::Weight(g, a) => targeted_weight_dropout_sharded(w, g, a, SEED, OFFSET, s, comm),
        Op::PruneW(g) => prune_weights_sharded(w, g, s, comm),
        Op::Unit(g, a) => targeted_unit_dropout_sharded(w, g, a, SEED, OFFSET, s, comm),
        Op::PruneU(g) => prune_units_sharded(w, g, s, comm),
        Op::Nm(n, m, a) => targeted_nm_dropout_sharded(w, n, m, a, SEED, OFFSET, s, comm),
    }
}

/// The op's value and gradient (of `sum(op(w) * g)`) on the full weight.
fn value_and_grad(
    w: &Tensor,
    g: &Tensor,
    f: impl FnOnce(&Tensor) -> Result<Tensor>,
) -> Result<(Tensor, Tensor)> {
    let v = Var::from_tensor(w)?;
    let out = f(v.as_tensor())?;
    let grads = out.mul(g)?.sum_all()?.backward()?;
    let grad = grads.get(v.as_tensor()).expect("w takes part").clone();
    Ok((out, grad))
}

/// Every rank's value and gradient equal the full op's, restricted to its shard.
fn check_equal(
    op: Op,
    full: (usize, usize),
    dtype: DType,
    world: usize,
    dim: ShardDim,
    uneven: bool,
) {
    let w = weight(full.0, full.1, dtype, (full.0 * 131 + full.1) as u64);
    let g = weight(full.0, full.1, dtype, 99).abs().unwrap(); // the incoming gradient
    let (want, want_grad) = value_and_grad(&w, &g, |w| unsharded(op, w)).unwrap();
    let shards = split(dim, full, world, uneven);
    let got = on_ranks(world, |comm| {
        let (s, len) = shards[comm.rank()];
        value_and_grad(&s.narrow(&w, len)?, &s.narrow(&g, len)?, |w| {
            sharded(op, w, &s, &comm)
        })
    });
    for (r, res) in got.into_iter().enumerate() {
        let (s, len) = shards[r];
        let what = format!("{op:?} {full:?} {dtype:?} world {world} {dim:?} uneven {uneven} rank {r} ({s:?}, len {len})");
        let (v, grad) = res.unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(
            bits(&v),
            bits(&s.narrow(&want, len).unwrap()),
            "{what}: values"
        );
        assert_eq!(
            bits(&grad),
            bits(&s.narrow(&want_grad, len).unwrap()),
            "{what}: gradient"
        );
    }
}

const DTYPES: [DType; 4] = [DType::F32, DType::F64, DType::F16, DType::BF16];

#[test]
fn weight_dropout_and_pruning_equal_the_unsharded_op() {
    for dtype in DTYPES {
        for world in [2, 3, 4] {
            for dim in [ShardDim::Rows, ShardDim::Cols] {
                for uneven in [false, true] {
                    for full in [(7, 37), (6, 300)] {
                        for op in [Op::Weight(0.5, 0.5), Op::Weight(0.9, 1.0), Op::PruneW(0.3)] {
                            check_equal(op, full, dtype, world, dim, uneven);
                        }
                    }
                }
            }
        }
    }
    // gamma 0 and 1 (k = 0, k = n), alpha 0.
    for op in [
        Op::Weight(0.0, 0.5),
        Op::Weight(1.0, 0.5),
        Op::Weight(0.5, 0.0),
        Op::PruneW(1.0),
    ] {
        check_equal(op, (5, 33), DType::F32, 3, ShardDim::Cols, true);
    }
}

#[test]
fn unit_dropout_and_pruning_equal_the_unsharded_op() {
    for dtype in DTYPES {
        for world in [2, 3, 4] {
            for dim in [ShardDim::Rows, ShardDim::Cols] {
                for uneven in [false, true] {
                    // Rows of at most 1024 (one gather of the lanes) and longer (the chain).
                    for full in [(9, 37), (7, 1500)] {
                        for op in [Op::Unit(0.5, 0.5), Op::PruneU(0.4), Op::Unit(1.0, 0.7)] {
                            check_equal(op, full, dtype, world, dim, uneven);
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn nm_dropout_equals_the_unsharded_op() {
    for dtype in DTYPES {
        for world in [2, 3, 4] {
            for op in [Op::Nm(2, 4, 0.5), Op::Nm(1, 4, 1.0), Op::Nm(3, 8, 0.7)] {
                let m = match op {
                    Op::Nm(_, m, _) => m,
                    _ => unreachable!(),
                };
                check_equal(op, (5, 48), dtype, world, ShardDim::Rows, true);
                // Column shards of whole groups: every rank m * (some groups).
                let full = (5, m * 12);
                check_equal(op, full, dtype, world, ShardDim::Cols, false);
                let w = weight(full.0, full.1, dtype, 3);
                let want = unsharded(op, &w).unwrap();
                let starts: Vec<usize> = (0..=world)
                    .map(|r| [0, 1, 3, 7, 12][r.min(4)] * m)
                    .collect();
                let starts: Vec<usize> = starts.iter().map(|&s| s.min(full.1)).collect();
                let mut starts = starts[..world].to_vec();
                starts.push(full.1);
                let got = on_ranks(world, |comm| {
                    let r = comm.rank();
                    let s = Shard {
                        dim: ShardDim::Cols,
                        start: starts[r],
                        full,
                    };
                    sharded(op, &s.narrow(&w, starts[r + 1] - starts[r])?, &s, &comm)
                });
                for (r, v) in got.into_iter().enumerate() {
                    let want = want
                        .narrow(1, starts[r], starts[r + 1] - starts[r])
                        .unwrap();
                    assert_eq!(
                        bits(&v.unwrap()),
                        bits(&want),
                        "{op:?} {dtype:?} uneven groups rank {r}"
                    );
                }
            }
        }
    }
}

/// Errors of every rank, as strings.
fn errors<T: std::fmt::Debug>(res: Vec<Result<T>>) -> Vec<String> {
    res.into_iter()
        .enumerate()
        .map(|(r, x)| match x {
            Ok(v) => panic!("rank {r}: expected an error, got {v:?}"),
            Err(e) => e.to_string(),
        })
        .collect()
}

fn each_contains(errs: &[String], parts: &[&str]) {
    for (r, e) in errs.iter().enumerate() {
        for p in parts {
            assert!(e.contains(p), "rank {r}: {e:?} does not say {p:?}");
        }
    }
}

/// A call of one rank: `(rank, w, shard, comm)`.
type RankOp<'a> = dyn Fn(usize, &Tensor, &Shard, &dyn Collective) -> Result<Tensor> + Sync + 'a;

#[test]
fn ranks_that_disagree_get_the_same_error_naming_every_value() {
    let full = (4, 12);
    let w = weight(full.0, full.1, DType::F32, 1);
    let run = |f: &RankOp<'_>| {
        errors(on_ranks(3, |comm| {
            let s = Shard::even(ShardDim::Cols, full, comm.rank(), 3)?;
            f(comm.rank(), &s.narrow(&w, 4)?, &s, &comm)
        }))
    };
    let g = |r: usize| if r == 1 { 0.25 } else { 0.5 };
    let e = run(&|r, w, s, c| targeted_weight_dropout_sharded(w, g(r), 0.5, 1, 2, s, c));
    each_contains(
        &e,
        &[
            "disagree on gamma",
            "rank 0: 0.5",
            "rank 1: 0.25",
            "rank 2: 0.5",
        ],
    );
    let e = run(&|r, w, s, c| targeted_weight_dropout_sharded(w, 0.5, g(r), 1, 2, s, c));
    each_contains(&e, &["disagree on alpha", "rank 1: 0.25"]);
    let e = run(&|r, w, s, c| {
        targeted_weight_dropout_sharded(w, 0.5, 0.5, 1 + r as u64 * (1 << 40), 2, s, c)
    });
    each_contains(
        &e,
        &["disagree on seed", "rank 0: 1,", "rank 2: 2199023255553"],
    );
    let e =
        run(&|r, w, s, c| targeted_unit_dropout_sharded(w, 0.5, 0.5, 1, 2 + (r == 2) as u64, s, c));
    each_contains(&e, &["disagree on offset", "rank 1: 2", "rank 2: 3"]);
    // A bad value on one rank: every rank names it (not a hang: the others never wait).
    let e = run(&|r, w, s, c| prune_weights_sharded(w, if r == 2 { 1.5 } else { 0.5 }, s, c));
    each_contains(&e, &["rank 2: gamma must be a number in [0, 1], got 1.5"]);
    let e = run(&|r, w, s, c| {
        targeted_weight_dropout_sharded(w, 0.5, if r == 0 { f64::NAN } else { 0.5 }, 1, 2, s, c)
    });
    each_contains(&e, &["rank 0: alpha must be a number in [0, 1], got NaN"]);
    // Different ops on different ranks.
    let e = run(&|r, w, s, c| {
        if r == 0 {
            prune_units_sharded(w, 0.5, s, c)
        } else {
            prune_weights_sharded(w, 0.5, s, c)
        }
    });
    each_contains(
        &e,
        &[
            "called different ops",
            "rank 0: prune_units_sharded",
            "rank 1: prune_weights_sharded",
        ],
    );
    // A different dtype on one rank.
    let e = run(&|r, w, s, c| {
        let w = if r == 1 {
            w.to_dtype(DType::F64)?
        } else {
            w.clone()
        };
        prune_weights_sharded(&w, 0.5, s, c)
    });
    each_contains(&e, &["differ in dtype", "rank 1: f64"]);
    // Not a weight: a rank-3 tensor, or integers.
    let e = run(&|r, w, s, c| {
        let w = if r == 1 { w.unsqueeze(0)? } else { w.clone() };
        prune_weights_sharded(&w, 0.5, s, c)
    });
    each_contains(&e, &["rank 1: w must be a rank-2 weight", "rank 1: 3"]);
    let e = run(&|_, w, s, c| prune_weights_sharded(&w.to_dtype(DType::U32)?, 0.5, s, c));
    each_contains(&e, &["w must be f16, bf16, f32 or f64"]);
    // N:M arguments.
    let e = run(&|r, w, s, c| {
        targeted_nm_dropout_sharded(w, 2, if r == 0 { 33 } else { 4 }, 0.5, 1, 2, s, c)
    });
    each_contains(&e, &["rank 0: m = 33 is not a group size"]);
}

#[test]
fn shards_that_do_not_tile_are_errors_on_every_rank() {
    let full = (6, 12);
    let w = weight(full.0, full.1, DType::F32, 2);
    // The local tensors are zeros of the shard's shape: the errors do not depend on values.
    let run = |world: usize, shard: &(dyn Fn(usize) -> (Shard, usize) + Sync)| {
        errors(on_ranks(world, |comm| {
            let (s, len) = shard(comm.rank());
            let dims = match s.dim {
                ShardDim::Rows => (len, s.full.1),
                ShardDim::Cols => (s.full.0, len),
            };
            prune_weights_sharded(
                &Tensor::zeros(dims, DType::F32, &Device::Cpu)?,
                0.5,
                &s,
                &comm,
            )
        }))
    };
    let cols = |start, full| Shard {
        dim: ShardDim::Cols,
        start,
        full,
    };
    // Overlap: both ranks hold columns 0..6.
    let e = run(2, &|_| (cols(0, full), 6));
    each_contains(
        &e,
        &[
            "do not tile the 12 columns",
            "rank 0: columns 0..6",
            "rank 1: columns 0..6",
            "columns 0..6 are on two ranks",
        ],
    );
    // A gap.
    let e = run(2, &|r| (cols(r * 7, full), 5));
    each_contains(&e, &["columns 5..7 are on no rank"]);
    // Shards made for a world of 4 in a group of 2.
    let e = run(2, &|r| {
        (Shard::even(ShardDim::Cols, full, r, 4).unwrap(), 3)
    });
    each_contains(
        &e,
        &[
            "the collective has 2 ranks",
            "hold 6 columns in all",
            "another world size",
        ],
    );
    // Shards made for a world of 2 in a group of 3.
    let e = run(3, &|r| {
        (Shard::even(ShardDim::Rows, full, r % 2, 2).unwrap(), 3)
    });
    each_contains(
        &e,
        &[
            "do not tile the 6 rows",
            "the collective has 3 ranks",
            "hold 9 rows in all",
        ],
    );
    // Past the end, a wrong full shape, a shard whose other side is not the full weight's.
    let e = run(2, &|r| (cols(r * 6 + 1, full), 6));
    each_contains(&e, &["rank 1: columns 7..13 are past the 12 columns"]);
    let e = run(2, &|r| {
        (cols(r * 6, if r == 0 { full } else { (6, 13) }), 6)
    });
    each_contains(
        &e,
        &["disagree on the full weight's shape", "rank 1: [6, 13]"],
    );
    let e = errors(on_ranks(2, |comm| {
        let s = Shard::even(ShardDim::Rows, full, comm.rank(), 2)?;
        prune_weights_sharded(
            &w.narrow(0, 3 * comm.rank(), 3)?.narrow(1, 0, 10)?,
            0.5,
            &s,
            &comm,
        )
    }));
    each_contains(&e, &["holds all 12 columns", "but w is [3, 10]"]);
    // N:M column shards that split a group.
    let e = errors(on_ranks(2, |comm| {
        let s = cols(comm.rank() * 6, full);
        targeted_nm_dropout_sharded(&s.narrow(&w, 6)?, 2, 4, 0.5, 1, 2, &s, &comm)
    }));
    each_contains(
        &e,
        &[
            "rank 0: column shards must hold whole groups of m = 4",
            "holds columns 0..6",
        ],
    );
}

#[test]
fn a_rank_that_leaves_does_not_hang_the_others() {
    let res = on_ranks(3, |comm| {
        if comm.rank() == 1 {
            return Ok(None); // returns without calling: its handle drops
        }
        let s = Shard::even(ShardDim::Cols, (4, 9), comm.rank(), 3)?;
        prune_weights_sharded(
            &Tensor::ones((4, 3), DType::F32, &Device::Cpu)?,
            0.5,
            &s,
            &comm,
        )
        .map(Some)
    });
    for r in [0, 2] {
        let e = res[r].as_ref().expect_err("rank 1 left").to_string();
        assert!(e.contains("left the group"), "rank {r}: {e}");
    }
    // Tensors of different shapes: an error naming each.
    let res = on_ranks(2, |comm| {
        comm.all_reduce_sum(&Tensor::zeros(1 + comm.rank(), DType::F32, &Device::Cpu)?)
    });
    for e in errors(res) {
        assert!(e.contains("rank 0: F32 [1], rank 1: F32 [2]"), "{e}");
    }
}

/// `VarMapDropout::apply_sharded` on each rank's shards = `apply_seeded` on the full
/// weights, restricted; the gradients masked alike.
#[test]
fn varmap_sharded_step_equals_the_unsharded_step() -> Result<()> {
    use candle_nn::VarMap;
    let (out, hidden, inp) = (5, 12, 9);
    let w1 = weight(hidden, inp, DType::F32, 11); // column-parallel: rows sharded
    let w2 = weight(out, hidden, DType::F32, 12); // row-parallel: columns sharded
    let bias = weight(1, out, DType::F32, 13).squeeze(0)?;
    let cfg = |name: &str| match name {
        "a.weight" => Some(TargetedDropout::weight(0.5, 0.5).unwrap()),
        "b.weight" => Some(TargetedDropout::unit(0.4, 0.8).unwrap()),
        "c.bias" => Some(TargetedDropout::weight(0.4, 1.0).unwrap()),
        _ => None,
    };
    let build = |a: &Tensor, b: &Tensor| -> Result<(VarMap, VarMapDropout)> {
        let vm = VarMap::new();
        {
            let mut d = vm.data().lock().unwrap();
            d.insert("a.weight".into(), Var::from_tensor(a)?);
            d.insert("b.weight".into(), Var::from_tensor(b)?);
            d.insert("c.bias".into(), Var::from_tensor(&bias)?);
        }
        let vd = VarMapDropout::new(&vm, |n, _| cfg(n))?;
        Ok((vm, vd))
    };
    let grads_of = |vm: &VarMap| -> Result<candle_core::backprop::GradStore> {
        let d = vm.data().lock().unwrap();
        let loss = (d["a.weight"].as_tensor().sqr()?.sum_all()?
            + d["b.weight"].as_tensor().sqr()?.sum_all()?
            + d["c.bias"].as_tensor().sqr()?.sum_all()?)?;
        loss.backward()
    };
    // The unsharded step.
    let (vm, vd) = build(&w1, &w2)?;
    let step = vd.apply_seeded(SEED, OFFSET)?;
    let dropped: Vec<Tensor> = ["a.weight", "b.weight", "c.bias"]
        .iter()
        .map(|n| vm.data().lock().unwrap()[*n].as_tensor().copy().unwrap())
        .collect();
    let mut grads = grads_of(&vm)?;
    step.finish(&mut grads)?;
    let d = vm.data().lock().unwrap();
    let want_grads: Vec<Tensor> = ["a.weight", "b.weight", "c.bias"]
        .iter()
        .map(|n| grads.get(d[*n].as_tensor()).unwrap().clone())
        .collect();
    drop(d);
    for world in [2, 3] {
        let res = on_ranks(world, |comm| {
            let r = comm.rank();
            let s1 = Shard::even(ShardDim::Rows, (hidden, inp), r, world)?;
            let s2 = Shard::even(ShardDim::Cols, (out, hidden), r, world)?;
            let l1 = Shard::even_len(ShardDim::Rows, (hidden, inp), r, world);
            let l2 = Shard::even_len(ShardDim::Cols, (out, hidden), r, world);
            let (vm, vd) = build(&s1.narrow(&w1, l1)?, &s2.narrow(&w2, l2)?)?;
            let step =
                vd.apply_sharded(&[("a.weight", s1), ("b.weight", s2)], SEED, OFFSET, &comm)?;
            let got: Vec<Tensor> = ["a.weight", "b.weight", "c.bias"]
                .iter()
                .map(|n| vm.data().lock().unwrap()[*n].as_tensor().copy().unwrap())
                .collect();
            let mut grads = grads_of(&vm)?;
            step.finish(&mut grads)?;
            let d = vm.data().lock().unwrap();
            let g: Vec<Tensor> = ["a.weight", "b.weight", "c.bias"]
                .iter()
                .map(|n| grads.get(d[*n].as_tensor()).unwrap().clone())
                .collect();
            let restored = bits(d["a.weight"].as_tensor()) == bits(&s1.narrow(&w1, l1)?);
            Ok((got, g, restored, [(s1, l1), (s2, l2)]))
        });
        for (r, x) in res.into_iter().enumerate() {
            let (got, g, restored, sh) = x?;
            assert!(restored, "rank {r}: weights restored");
            for i in 0..2 {
                let (s, l) = sh[i];
                assert_eq!(
                    bits(&got[i]),
                    bits(&s.narrow(&dropped[i], l)?),
                    "world {world} rank {r} var {i}"
                );
                assert_eq!(
                    bits(&g[i]),
                    bits(&s.narrow(&want_grads[i], l)?),
                    "world {world} rank {r} grad {i}"
                );
            }
            assert_eq!(bits(&got[2]), bits(&dropped[2]), "replicated variable");
            assert_eq!(bits(&g[2]), bits(&want_grads[2]), "replicated gradient");
        }
    }
    Ok(())
}
