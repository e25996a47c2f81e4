# pstream's recipes. `just --list` shows them.

# Run every test in the workspace.
test:
    cargo test --workspace

# Build the benchmark harness in release and run it; pass flags through, e.g.
# `just bench --quick` or `just bench --only double sha --runs 5`. The SVG charts
# go to docs/bench/, where docs/benchmarks.md embeds them.
bench *ARGS:
    cargo build --release -p pstream-bench -p pstream-coord
    target/release/pstream-bench --charts docs/bench {{ARGS}}

# Formatting and lints, as CI checks them.
lint:
    cargo fmt --all --check && cargo clippy --workspace --all-targets -- -D warnings

# Double a million numbers with the command-line launcher.
demo:
    seq 1 1000000 | cargo run --release -p pstream-coord -- run --function double --format jsonl | tail -n 3

# Fuzz the frame decoder and the handshake (cargo install cargo-fuzz first).
# `just fuzz frame_decoder 600` runs one target for ten minutes.
fuzz target="frame_decoder" seconds="60":
    cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run {{target}} -- -max_total_time={{seconds}} -rss_limit_mb=2048
