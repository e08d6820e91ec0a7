//! Errors of the QEMU host adapter: they name the VM and the step that failed.

use crate::qmp::QmpError;

#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    #[error("vm {vm}: {step}: {source}")]
    Qmp {
        vm: String,
        step: String,
        #[source]
        source: QmpError,
    },
    #[error("vm {vm}: {step}: {reason}")]
    Other {
        vm: String,
        step: String,
        reason: String,
    },
    #[error("host {host}: {reason}")]
    Host { host: String, reason: String },
}

impl QemuError {
    pub fn qmp(vm: &str, step: impl Into<String>) -> impl FnOnce(QmpError) -> QemuError {
        let (vm, step) = (vm.to_string(), step.into());
        move |source| QemuError::Qmp { vm, step, source }
    }

    pub fn other(vm: &str, step: impl Into<String>, reason: impl std::fmt::Display) -> QemuError {
        QemuError::Other {
            vm: vm.to_string(),
            step: step.into(),
            reason: reason.to_string(),
        }
    }
}
