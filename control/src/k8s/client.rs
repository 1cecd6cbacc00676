//! One way to reach the API server for every process: a kubeconfig file when given
//! (`--kubeconfig`), else in-cluster service account, then `$KUBECONFIG`.

use std::path::{Path, PathBuf};

/// Why no client could be made.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("kubeconfig {path}: {source}")]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("no cluster configuration (in-cluster or $KUBECONFIG): {0}")]
    Infer(#[from] kube::config::InferConfigError),
    #[error("creating the API client: {0}")]
    Client(#[source] kube::Error),
}

/// The cluster's configuration from `kubeconfig`, or inferred from the environment
/// (a process that needs several clients, e.g. one per concern, builds them from it).
pub async fn config(kubeconfig: Option<&Path>) -> Result<kube::Config, ClientError> {
    use kube::config::{KubeConfigOptions, Kubeconfig};
    Ok(match kubeconfig {
        Some(path) => {
            let err = |source| ClientError::Kubeconfig {
                path: path.to_owned(),
                source,
            };
            let kc = Kubeconfig::read_from(path).map_err(err)?;
            kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(err)?
        }
        None => kube::Config::infer().await?,
    })
}

/// A client from `kubeconfig`, or inferred from the environment.
pub async fn client(kubeconfig: Option<&Path>) -> Result<kube::Client, ClientError> {
    kube::Client::try_from(config(kubeconfig).await?).map_err(ClientError::Client)
}
