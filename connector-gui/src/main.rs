//! Piko Connector: the tray app. Everything but process start lives in the library.
#![cfg_attr(not(debug_assertions), windows_subsystem = "windows")]

fn main() -> anyhow::Result<()> {
    piko_connector::run()
}
