//! Commands (provisional).
#![allow(missing_docs, clippy::unused_async)]
use tauri::State;
use crate::state::AppState;
use crate::view::View;
type R<T> = Result<T, String>;
#[tauri::command] pub fn snapshot(s: State<'_, AppState>) -> View { s.view() }
#[tauri::command] pub fn add_endpoint() -> R<View> { Err("todo".into()) }
#[tauri::command] pub fn update_endpoint() -> R<View> { Err("todo".into()) }
#[tauri::command] pub fn remove_endpoint() -> R<View> { Err("todo".into()) }
#[tauri::command] pub fn set_endpoint_enabled() -> R<View> { Err("todo".into()) }
#[tauri::command] pub fn test_target() -> R<String> { Err("todo".into()) }
#[tauri::command] pub fn sign_in() -> R<View> { Err("todo".into()) }
#[tauri::command] pub fn sign_out() -> R<View> { Err("todo".into()) }
#[tauri::command] pub fn set_preferences() -> R<View> { Err("todo".into()) }
#[tauri::command] pub fn copy_text() -> R<()> { Err("todo".into()) }
#[tauri::command] pub fn logs_tail() -> R<()> { Err("todo".into()) }
#[tauri::command] pub fn open_log_folder() -> R<()> { Err("todo".into()) }
#[tauri::command] pub fn copy_diagnostics() -> R<()> { Err("todo".into()) }
#[tauri::command] pub fn inspector_list() -> R<()> { Err("todo".into()) }
#[tauri::command] pub fn inspector_get() -> R<()> { Err("todo".into()) }
#[tauri::command] pub fn inspector_replay() -> R<()> { Err("todo".into()) }
