//! `cargo bench -p salt-proto`: Crypticle on 1 KiB and 1 MiB, and the RSA operations on the
//! critical path (keygen per clone, auth decryptions, tok, signature checks). Plain timing
//! loops; medians of several batches.

use salt_proto::crypticle::{generate_key_string, Crypticle};
use salt_proto::keys::{EncAlgo, PrivateKey, SigAlgo};
use std::hint::black_box;
use std::time::{Duration, Instant};

/// Median time of one call, over `batches` batches sized to run ~`budget` each.
fn bench(name: &str, budget: Duration, mut f: impl FnMut()) {
    let t = Instant::now();
    f();
    let once = t.elapsed().max(Duration::from_nanos(1));
    let per_batch = ((budget.as_secs_f64() / 5.0) / once.as_secs_f64()).clamp(1.0, 1e6) as u32;
    let mut samples: Vec<f64> = (0..5)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..per_batch {
                f();
            }
            t.elapsed().as_secs_f64() / f64::from(per_batch)
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    let m = samples[2];
    let (v, unit) = if m >= 1e-3 {
        (m * 1e3, "ms")
    } else {
        (m * 1e6, "µs")
    };
    println!("{name:<40} {v:>10.2} {unit}  ({} runs)", 5 * per_batch);
}

fn main() {
    let budget = Duration::from_millis(
        std::env::var("BENCH_MS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(1500),
    );
    let c = Crypticle::from_key_string(generate_key_string().as_bytes()).unwrap();
    for (label, size) in [("1 KiB", 1 << 10), ("1 MiB", 1 << 20)] {
        let data = vec![0x5a_u8; size];
        let ct = c.encrypt(&data);
        bench(&format!("crypticle encrypt {label}"), budget, || {
            black_box(c.encrypt(black_box(&data)));
        });
        bench(&format!("crypticle decrypt {label}"), budget, || {
            black_box(c.decrypt(black_box(&ct)).unwrap());
        });
    }

    bench("rsa keygen 2048", budget * 4, || {
        black_box(PrivateKey::generate(2048).unwrap());
    });
    bench("rsa keygen 4096", budget * 8, || {
        black_box(PrivateKey::generate(4096).unwrap());
    });
    let key = PrivateKey::generate(2048).unwrap();
    let pk = key.public_key().clone();
    let ct = pk.oaep_encrypt(EncAlgo::OaepSha1, &[b'k'; 76]).unwrap();
    bench("rsa-2048 oaep decrypt (auth key strings)", budget, || {
        black_box(key.oaep_decrypt(EncAlgo::OaepSha1, &ct).unwrap());
    });
    bench("rsa-2048 oaep encrypt (token)", budget, || {
        black_box(pk.oaep_encrypt(EncAlgo::OaepSha1, &[b't'; 76]).unwrap());
    });
    bench("rsa-2048 x9.31 sign (tok)", budget, || {
        black_box(key.x931_sign(b"salt").unwrap());
    });
    let sig = key
        .x931_sign(b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
        .unwrap();
    bench("rsa-2048 x9.31 verify (auth sig)", budget, || {
        pk.x931_verify(
            b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            &sig,
        )
        .unwrap();
    });
    let psig = key.sign(SigAlgo::Pkcs1v15Sha1, &[7u8; 600]);
    bench("rsa-2048 pkcs1v15 verify (auth reply)", budget, || {
        pk.verify(SigAlgo::Pkcs1v15Sha1, &[7u8; 600], &psig)
            .unwrap();
    });
    bench("rsa-2048 pem encode private+public", budget, || {
        black_box(key.to_pem());
        black_box(pk.pem());
    });
}
