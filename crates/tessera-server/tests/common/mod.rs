//! Starts an engine and a server on an ephemeral loopback port for one test.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use tessera_core::EngineConfig;
use tessera_engine::{Engine, EngineOptions};
use tessera_server::AppState;
use tokio::sync::oneshot;

pub struct TestServer {
    pub addr: SocketAddr,
    pub state: Arc<AppState>,
    stop: Option<oneshot::Sender<()>>,
    pub handle: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl TestServer {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Triggers the drain, as SIGTERM does.
    pub fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub fn tiny_config() -> EngineConfig {
    let mut config = EngineConfig::default();
    config.cache.num_blocks = Some(256);
    config.model.max_model_len = Some(256);
    config
}

pub async fn start(config: EngineConfig) -> TestServer {
    start_with(config, EngineOptions::default()).await
}

pub async fn start_with(config: EngineConfig, options: EngineOptions) -> TestServer {
    let engine = Engine::start_with(config.clone(), options).await.unwrap();
    let state = tessera_server::build_state(engine, config.server.clone()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let handle = tokio::spawn(tessera_server::serve(listener, state.clone(), async move {
        let _ = stopped.await;
    }));
    TestServer { addr, state, stop: Some(stop), handle }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::new()
}
