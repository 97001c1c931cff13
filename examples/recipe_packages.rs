//! Prints a recipe's package list, comma-separated (used by bench/image-build.sh
//! so the baseline installs exactly what banger installs).
fn main() {
    let name = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "debian-bookworm".into());
    let r = banger::image::recipe::find(&name).expect("unknown recipe");
    println!("{}", r.packages().join(","));
}
