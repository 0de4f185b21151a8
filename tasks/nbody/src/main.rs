//! `nbody [STEPS]`: the Computer Language Benchmarks Game n-body simulation of the
//! Jovian planets (5 bodies, f64), advancing STEPS times (default 200,000) with
//! dt = 0.01 and printing the total energy at the start and every STEPS/10 steps.
//!
//! Floating-point state in a small array: wasm f64 arithmetic (including `sqrt`) is
//! IEEE-exact, so the `{:.9}` energies must match byte for byte after migration.

use std::f64::consts::PI;

const SOLAR_MASS: f64 = 4.0 * PI * PI;
const DAYS_PER_YEAR: f64 = 365.24;
const DT: f64 = 0.01;

#[derive(Clone, Copy)]
struct Body {
    pos: [f64; 3],
    vel: [f64; 3],
    mass: f64,
}

fn main() {
    let steps: u64 = arg(1, 200_000);
    let every = (steps / 10).max(1);
    let mut bodies = initial_bodies();
    offset_momentum(&mut bodies);
    println!("nbody step 0 energy={:.9}", energy(&bodies));
    for step in 1..=steps {
        advance(&mut bodies, DT);
        if step.is_multiple_of(every) {
            println!("nbody step {step} energy={:.9}", energy(&bodies));
        }
    }
    println!("nbody done steps={steps} energy={:.9}", energy(&bodies));
}

// The constants are the benchmark's published digits, kept verbatim so they can be
// checked against it; f64 rounds the excess away.
#[allow(clippy::excessive_precision)]
fn initial_bodies() -> [Body; 5] {
    let body = |pos: [f64; 3], vel: [f64; 3], mass: f64| Body {
        pos,
        vel: vel.map(|v| v * DAYS_PER_YEAR),
        mass: mass * SOLAR_MASS,
    };
    [
        // Sun
        body([0.0; 3], [0.0; 3], 1.0),
        // Jupiter
        body(
            [
                4.84143144246472090e+00,
                -1.16032004402742839e+00,
                -1.03622044471123109e-01,
            ],
            [
                1.66007664274403694e-03,
                7.69901118419740425e-03,
                -6.90460016972063023e-05,
            ],
            9.54791938424326609e-04,
        ),
        // Saturn
        body(
            [
                8.34336671824457987e+00,
                4.12479856412430479e+00,
                -4.03523417114321381e-01,
            ],
            [
                -2.76742510726862411e-03,
                4.99852801234917238e-03,
                2.30417297573763929e-05,
            ],
            2.85885980666130812e-04,
        ),
        // Uranus
        body(
            [
                1.28943695621391310e+01,
                -1.51111514016986312e+01,
                -2.23307578892655734e-01,
            ],
            [
                2.96460137564761618e-03,
                2.37847173959480950e-03,
                -2.96589568540237556e-05,
            ],
            4.36624404335156298e-05,
        ),
        // Neptune
        body(
            [
                1.53796971148509165e+01,
                -2.59193146099879641e+01,
                1.79258772950371181e-01,
            ],
            [
                2.68067772490389322e-03,
                1.62824170038242295e-03,
                -9.51592254519715870e-05,
            ],
            5.15138902046611451e-05,
        ),
    ]
}

/// Gives the Sun the momentum that makes the system's total momentum zero.
fn offset_momentum(bodies: &mut [Body; 5]) {
    let mut p = [0.0; 3];
    for b in bodies.iter() {
        for (pk, vk) in p.iter_mut().zip(b.vel) {
            *pk += vk * b.mass;
        }
    }
    bodies[0].vel = p.map(|pk| -pk / SOLAR_MASS);
}

fn advance(bodies: &mut [Body; 5], dt: f64) {
    for i in 0..bodies.len() {
        let (head, tail) = bodies.split_at_mut(i + 1);
        let bi = &mut head[i];
        for bj in tail.iter_mut() {
            let d = [
                bi.pos[0] - bj.pos[0],
                bi.pos[1] - bj.pos[1],
                bi.pos[2] - bj.pos[2],
            ];
            let d2 = d[0] * d[0] + d[1] * d[1] + d[2] * d[2];
            let mag = dt / (d2 * d2.sqrt());
            for (k, dk) in d.into_iter().enumerate() {
                bi.vel[k] -= dk * bj.mass * mag;
                bj.vel[k] += dk * bi.mass * mag;
            }
        }
    }
    for b in bodies.iter_mut() {
        for (pk, vk) in b.pos.iter_mut().zip(b.vel) {
            *pk += dt * vk;
        }
    }
}

fn energy(bodies: &[Body; 5]) -> f64 {
    let mut e = 0.0;
    for (i, bi) in bodies.iter().enumerate() {
        let [vx, vy, vz] = bi.vel;
        e += 0.5 * bi.mass * (vx * vx + vy * vy + vz * vz);
        for bj in &bodies[i + 1..] {
            let [dx, dy, dz] = [0, 1, 2].map(|k| bi.pos[k] - bj.pos[k]);
            e -= bi.mass * bj.mass / (dx * dx + dy * dy + dz * dz).sqrt();
        }
    }
    e
}

/// Positional argument `i` parsed as a number, or `default` when absent.
fn arg<T: std::str::FromStr>(i: usize, default: T) -> T {
    match std::env::args().nth(i) {
        None => default,
        Some(s) => s.parse().unwrap_or_else(|_| {
            eprintln!("nbody: argument {i} must be a number, got {s:?}");
            std::process::exit(2)
        }),
    }
}
