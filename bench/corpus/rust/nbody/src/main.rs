//! The n-body simulation from the Computer Language Benchmarks Game: a simple
//! model of the Jovian planets orbiting the sun, integrated with a fixed step.
//!
//! Usage: nbody [STEPS]

use std::env;
use std::f64::consts::PI;

const SOLAR_MASS: f64 = 4.0 * PI * PI;
const DAYS_PER_YEAR: f64 = 365.24;

#[derive(Clone, Copy, Debug)]
struct Body {
    pos: [f64; 3],
    vel: [f64; 3],
    mass: f64,
}

fn initial_bodies() -> Vec<Body> {
    vec![
        // Sun
        Body {
            pos: [0.0, 0.0, 0.0],
            vel: [0.0, 0.0, 0.0],
            mass: SOLAR_MASS,
        },
        // Jupiter
        Body {
            pos: [
                4.841_431_442_464_72e0,
                -1.160_320_044_027_428_4e0,
                -1.036_220_444_711_231_1e-1,
            ],
            vel: [
                1.660_076_642_744_037e-3 * DAYS_PER_YEAR,
                7.699_011_184_197_404e-3 * DAYS_PER_YEAR,
                -6.904_600_169_720_63e-5 * DAYS_PER_YEAR,
            ],
            mass: 9.547_919_384_243_266e-4 * SOLAR_MASS,
        },
        // Saturn
        Body {
            pos: [
                8.343_366_718_244_58e0,
                4.124_798_564_124_305e0,
                -4.035_234_171_143_214e-1,
            ],
            vel: [
                -2.767_425_107_268_624e-3 * DAYS_PER_YEAR,
                4.998_528_012_349_172e-3 * DAYS_PER_YEAR,
                2.304_172_975_737_639_3e-5 * DAYS_PER_YEAR,
            ],
            mass: 2.858_859_806_661_308e-4 * SOLAR_MASS,
        },
        // Uranus
        Body {
            pos: [
                1.289_436_956_213_913_1e1,
                -1.511_115_140_169_863_1e1,
                -2.233_075_788_926_557_3e-1,
            ],
            vel: [
                2.964_601_375_647_616e-3 * DAYS_PER_YEAR,
                2.378_471_739_594_809_5e-3 * DAYS_PER_YEAR,
                -2.965_895_685_402_375_6e-5 * DAYS_PER_YEAR,
            ],
            mass: 4.366_244_043_351_563e-5 * SOLAR_MASS,
        },
        // Neptune
        Body {
            pos: [
                1.537_969_711_485_091_1e1,
                -2.591_931_460_998_796_4e1,
                1.792_587_729_503_711_8e-1,
            ],
            vel: [
                2.680_677_724_903_893_2e-3 * DAYS_PER_YEAR,
                1.628_241_700_382_423e-3 * DAYS_PER_YEAR,
                -9.515_922_545_197_159e-5 * DAYS_PER_YEAR,
            ],
            mass: 5.151_389_020_466_114_5e-5 * SOLAR_MASS,
        },
    ]
}

/// Gives the sun the momentum that makes the system's total momentum zero.
fn offset_momentum(bodies: &mut [Body]) {
    let mut momentum = [0.0; 3];
    for body in bodies.iter() {
        for (m, v) in momentum.iter_mut().zip(body.vel) {
            *m += v * body.mass;
        }
    }
    let sun = &mut bodies[0];
    for (v, m) in sun.vel.iter_mut().zip(momentum) {
        *v = -m / SOLAR_MASS;
    }
}

fn energy(bodies: &[Body]) -> f64 {
    let mut e = 0.0;
    for (i, b) in bodies.iter().enumerate() {
        e += 0.5 * b.mass * (b.vel[0] * b.vel[0] + b.vel[1] * b.vel[1] + b.vel[2] * b.vel[2]);
        for other in &bodies[i + 1..] {
            let mut d2 = 0.0;
            for k in 0..3 {
                let d = b.pos[k] - other.pos[k];
                d2 += d * d;
            }
            e -= b.mass * other.mass / d2.sqrt();
        }
    }
    e
}

fn advance(bodies: &mut [Body], dt: f64) {
    let n = bodies.len();
    for i in 0..n {
        for j in (i + 1)..n {
            let dx = bodies[i].pos[0] - bodies[j].pos[0];
            let dy = bodies[i].pos[1] - bodies[j].pos[1];
            let dz = bodies[i].pos[2] - bodies[j].pos[2];

            let d2 = dx * dx + dy * dy + dz * dz;
            let mag = dt / (d2 * d2.sqrt());

            let mass_i = bodies[i].mass;
            let mass_j = bodies[j].mass;

            bodies[i].vel[0] -= dx * mass_j * mag;
            bodies[i].vel[1] -= dy * mass_j * mag;
            bodies[i].vel[2] -= dz * mass_j * mag;

            bodies[j].vel[0] += dx * mass_i * mag;
            bodies[j].vel[1] += dy * mass_i * mag;
            bodies[j].vel[2] += dz * mass_i * mag;
        }
    }
    for body in bodies.iter_mut() {
        for k in 0..3 {
            body.pos[k] += dt * body.vel[k];
        }
    }
}

fn main() {
    let steps: usize = env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);

    let mut bodies = initial_bodies();
    offset_momentum(&mut bodies);

    println!("{:.9}", energy(&bodies));
    for _ in 0..steps {
        advance(&mut bodies, 0.01);
    }
    println!("{:.9}", energy(&bodies));
}
