//! Rebuilds when a migration is added or changed: `sqlx::migrate!` embeds `migrations/` at compile
//! time, and without this cargo would not know the directory is an input.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
