//! The `santa` binary's library half: settings, wiring of the roles, and the application
//! lifecycle. `main` and the tests both go through [`Application::build`] and
//! [`Application::run_until_stopped`], so the tests exercise exactly what users run.

mod app;
mod backends;
pub mod bench;
mod plots;
mod settings;
pub mod suite;
pub mod telemetry;

pub use app::Application;
pub use settings::{Role, Settings};
