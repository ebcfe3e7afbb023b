//! [`run_models`]: the `main` of a test target without libtest's harness,
//! such as a loom model check.

/// Runs each `(name, model)` in order and prints libtest-like lines, ending
/// with `N passed, 0 failed`; a failing model panics, which fails the test
/// target. The first command-line argument not starting with `-` filters
/// the models by name, as libtest's filter does (so `cargo test --test loom
/// -- recycling` runs only the models whose name contains `recycling`).
///
/// ```
/// fn adds_up() {
///     assert_eq!(1 + 1, 2);
/// }
/// testkit::run_models(&[("adds_up", adds_up)]);
/// ```
pub fn run_models(models: &[(&str, fn())]) {
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let mut passed = 0;
    for &(name, model) in models {
        if filter.as_deref().is_some_and(|f| !name.contains(f)) {
            continue;
        }
        model();
        println!("model {name} ... ok");
        passed += 1;
    }
    println!("{passed} passed, 0 failed");
}
