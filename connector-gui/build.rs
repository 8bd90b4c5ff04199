//! Generates the Tauri context (config, capabilities, icons) the app embeds.
fn main() {
    tauri_build::build();
}
