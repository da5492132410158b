//! `bench-client`: the corecast load generator (built out in its own issue).

fn main() -> anyhow::Result<()> {
    println!("bench-client: not built yet");
    Ok(())
}
