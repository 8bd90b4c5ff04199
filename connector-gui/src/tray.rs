//! The tray icon: its look and tooltip follow the view model; its menu toggles endpoints,
//! copies URLs, opens the window, switches start-at-login and quits.
//!
//! The menu is rebuilt from the view on every change (a handful of items; cheaper to reason
//! about than patching items in place). Linux panels that speak AppIndicator show no tooltip,
//! so the same sentence is also the menu's first, disabled item.

use tauri::image::Image;
use tauri::menu::{
    CheckMenuItem, IsMenuItem, Menu, MenuEvent, MenuItem, PredefinedMenuItem, Submenu,
};
use tauri::tray::{MouseButton, MouseButtonState, TrayIcon, TrayIconBuilder, TrayIconEvent};
use tauri::{AppHandle, Manager, Runtime};

use crate::view::{tray_look, TrayLook, View};

/// The tray icon's id.
pub const TRAY_ID: &str = "piko";

const ICON_CONNECTED: &[u8] = include_bytes!("../icons/tray-connected.png");
const ICON_WARNING: &[u8] = include_bytes!("../icons/tray-warning.png");
const ICON_OFF: &[u8] = include_bytes!("../icons/tray-off.png");

/// Menu item ids (endpoint items append `:<endpoint id>`).
mod ids {
    pub const SUMMARY: &str = "summary";
    pub const TOGGLE: &str = "toggle:";
    pub const COPY: &str = "copy:";
    pub const OPEN: &str = "open";
    pub const AUTOSTART: &str = "autostart";
    pub const QUIT: &str = "quit";
}

/// What a click in the tray menu asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrayAction {
    /// Switch an endpoint on or off (the check item's new state).
    Toggle {
        /// Endpoint id.
        id: String,
    },
    /// Copy an endpoint's client URL.
    Copy {
        /// Endpoint id.
        id: String,
    },
    /// Show and focus the window.
    Open,
    /// Flip start-at-login.
    Autostart,
    /// Leave the app.
    Quit,
}

impl TrayAction {
    /// Decode a menu item id.
    pub fn parse(id: &str) -> Option<Self> {
        if let Some(ep) = id.strip_prefix(ids::TOGGLE) {
            return Some(TrayAction::Toggle { id: ep.to_string() });
        }
        if let Some(ep) = id.strip_prefix(ids::COPY) {
            return Some(TrayAction::Copy { id: ep.to_string() });
        }
        match id {
            ids::OPEN => Some(TrayAction::Open),
            ids::AUTOSTART => Some(TrayAction::Autostart),
            ids::QUIT => Some(TrayAction::Quit),
            _ => None,
        }
    }
}

/// The PNG for a look.
pub fn icon_bytes(look: TrayLook) -> &'static [u8] {
    match look {
        TrayLook::Connected => ICON_CONNECTED,
        TrayLook::Warning => ICON_WARNING,
        TrayLook::Off => ICON_OFF,
    }
}

/// The label of an endpoint's menu item: `● shop  → localhost:3000` or `▲ plc  reconnecting in 4s`.
pub fn endpoint_label(e: &crate::view::EndpointView) -> String {
    let detail = match e.tone {
        crate::view::Tone::Ok => format!("→ {}", e.target),
        _ => e.state.clone(),
    };
    format!("{} {}   {}", e.tone.glyph(), e.id, detail)
}

/// Create the tray icon (called once at startup).
pub fn create<R: Runtime>(
    app: &AppHandle<R>,
    view: &View,
    on_action: impl Fn(&AppHandle<R>, TrayAction) + Send + Sync + 'static,
) -> tauri::Result<TrayIcon<R>> {
    let menu = build_menu(app, view)?;
    let look = tray_look(&view.endpoints);
    TrayIconBuilder::with_id(TRAY_ID)
        .icon(Image::from_bytes(icon_bytes(look))?)
        .tooltip(&view.summary)
        .menu(&menu)
        .show_menu_on_left_click(true)
        .on_menu_event(move |app, event: MenuEvent| {
            if let Some(action) = TrayAction::parse(event.id().as_ref()) {
                on_action(app, action);
            }
        })
        .on_tray_icon_event(|tray, event| {
            // A double click opens the window (Windows and macOS; Linux uses the menu).
            if let TrayIconEvent::DoubleClick {
                button: MouseButton::Left,
                ..
            }
            | TrayIconEvent::Click {
                button: MouseButton::Middle,
                button_state: MouseButtonState::Up,
                ..
            } = event
            {
                show_window(tray.app_handle());
            }
        })
        .build(app)
}

/// Bring the tray up to date with `view`: icon, tooltip, menu.
pub fn update<R: Runtime>(app: &AppHandle<R>, view: &View) -> tauri::Result<()> {
    let Some(tray) = app.tray_by_id(TRAY_ID) else {
        return Ok(());
    };
    let look = tray_look(&view.endpoints);
    tray.set_icon(Some(Image::from_bytes(icon_bytes(look))?))?;
    tray.set_tooltip(Some(&view.summary))?;
    tray.set_menu(Some(build_menu(app, view)?))?;
    Ok(())
}

fn build_menu<R: Runtime>(app: &AppHandle<R>, view: &View) -> tauri::Result<Menu<R>> {
    let menu = Menu::new(app)?;
    menu.append(&MenuItem::with_id(
        app,
        ids::SUMMARY,
        &view.summary,
        false,
        None::<&str>,
    )?)?;
    menu.append(&PredefinedMenuItem::separator(app)?)?;
    for e in &view.endpoints {
        menu.append(&CheckMenuItem::with_id(
            app,
            format!("{}{}", ids::TOGGLE, e.id),
            endpoint_label(e),
            true,
            e.enabled,
            None::<&str>,
        )?)?;
    }
    let with_url: Vec<_> = view.endpoints.iter().filter(|e| e.url.is_some()).collect();
    match with_url.as_slice() {
        [] => {}
        [one] => menu.append(&MenuItem::with_id(
            app,
            format!("{}{}", ids::COPY, one.id),
            format!("Copy URL of {}", one.id),
            true,
            None::<&str>,
        )?)?,
        several => {
            let items = several
                .iter()
                .map(|e| {
                    MenuItem::with_id(
                        app,
                        format!("{}{}", ids::COPY, e.id),
                        e.id.as_str(),
                        true,
                        None::<&str>,
                    )
                })
                .collect::<tauri::Result<Vec<_>>>()?;
            let refs: Vec<&dyn IsMenuItem<R>> =
                items.iter().map(|i| i as &dyn IsMenuItem<R>).collect();
            menu.append(&Submenu::with_items(app, "Copy URL", true, &refs)?)?;
        }
    }
    if !view.endpoints.is_empty() {
        menu.append(&PredefinedMenuItem::separator(app)?)?;
    }
    menu.append(&MenuItem::with_id(
        app,
        ids::OPEN,
        "Open Piko Connector",
        true,
        None::<&str>,
    )?)?;
    // The preference is the truth shown (the OS entry follows it when it changes).
    let autostart = view.preferences.start_at_login;
    menu.append(&CheckMenuItem::with_id(
        app,
        ids::AUTOSTART,
        "Start at login",
        true,
        autostart,
        None::<&str>,
    )?)?;
    menu.append(&PredefinedMenuItem::separator(app)?)?;
    menu.append(&MenuItem::with_id(
        app,
        ids::QUIT,
        "Quit",
        true,
        None::<&str>,
    )?)?;
    Ok(menu)
}

/// Show, unminimize and focus the main window (tray "Open", a second launch).
pub fn show_window<R: Runtime>(app: &AppHandle<R>) {
    if let Some(w) = app.get_webview_window("main") {
        let _ = w.show();
        let _ = w.unminimize();
        let _ = w.set_focus();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn menu_ids_decode_to_actions() {
        assert_eq!(
            TrayAction::parse("toggle:shop.v2"),
            Some(TrayAction::Toggle {
                id: "shop.v2".into()
            })
        );
        assert_eq!(
            TrayAction::parse("copy:cam"),
            Some(TrayAction::Copy { id: "cam".into() })
        );
        assert_eq!(TrayAction::parse("open"), Some(TrayAction::Open));
        assert_eq!(TrayAction::parse("quit"), Some(TrayAction::Quit));
        assert_eq!(TrayAction::parse("summary"), None);
    }

    #[test]
    fn the_three_icons_are_distinct_pngs() {
        let icons = [
            icon_bytes(TrayLook::Connected),
            icon_bytes(TrayLook::Warning),
            icon_bytes(TrayLook::Off),
        ];
        for (i, a) in icons.iter().enumerate() {
            assert!(a.starts_with(b"\x89PNG"), "icon {i} is a PNG");
            let img = Image::from_bytes(a).expect("decodes");
            assert_eq!((img.width(), img.height()), (64, 64));
            for b in &icons[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }
}
