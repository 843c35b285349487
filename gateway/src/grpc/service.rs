//! `inference.GRPCInferenceService`: each RPC answers from the same
//! functions as its REST route; inference is in [`super::infer`].

use std::pin::Pin;

use futures::Stream;
use tonic::{Request, Response, Status, Streaming};

use super::proto::grpc_inference_service_server::GrpcInferenceService;
use super::proto::*;
use super::{describe, infer};
use crate::AppState;
use crate::error::ApiError;
use crate::host_client::HostCallError;
use crate::routes::v2::{health, metadata, repository, stats, system_shm};

/// The service, over the state every REST handler gets.
pub struct Service {
    pub app: AppState,
}

/// An empty version field means "the version routing picks", as in REST's
/// routes without `/versions/{v}`.
fn version(v: &str) -> Option<&str> {
    (!v.is_empty()).then_some(v)
}

/// Why an RPC of the protocol is not offered here.
fn not_offered(what: &str, why: &str) -> Status {
    Status::unimplemented(format!("{what} is not offered by this gateway: {why}"))
}

const LIFECYCLE: &str = "hosts are started and stopped by systemd or Kubernetes, which own their lifecycle";

type Reply<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl GrpcInferenceService for Service {
    async fn server_live(&self, _: Request<ServerLiveRequest>) -> Reply<ServerLiveResponse> {
        Ok(Response::new(ServerLiveResponse { live: true }))
    }

    /// Ready while every model this gateway knows has a ready host.
    async fn server_ready(&self, _: Request<ServerReadyRequest>) -> Reply<ServerReadyResponse> {
        Ok(Response::new(ServerReadyResponse { ready: self.app.fleet.readiness().is_ok() }))
    }

    /// Not ready while the model's hosts load, warm or restart; NOT_FOUND
    /// for a model no host has served.
    async fn model_ready(&self, request: Request<ModelReadyRequest>) -> Reply<ModelReadyResponse> {
        let r = request.into_inner();
        match self.app.fleet.route(&r.name, version(&r.version)) {
            Ok(_) => Ok(Response::new(ModelReadyResponse { ready: true })),
            Err(HostCallError::Unavailable { .. } | HostCallError::Overloaded(_)) => Ok(Response::new(ModelReadyResponse { ready: false })),
            Err(e) => Err(ApiError::from(e).into()),
        }
    }

    async fn server_metadata(&self, _: Request<ServerMetadataRequest>) -> Reply<ServerMetadataResponse> {
        Ok(Response::new(ServerMetadataResponse {
            name: health::SERVER_NAME.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: health::extensions(&self.app).into_iter().map(String::from).collect(),
        }))
    }

    async fn model_metadata(&self, request: Request<ModelMetadataRequest>) -> Reply<ModelMetadataResponse> {
        let r = request.into_inner();
        Ok(Response::new(describe::metadata(&metadata::describe(&self.app, &r.name, version(&r.version))?)))
    }

    async fn model_config(&self, request: Request<ModelConfigRequest>) -> Reply<ModelConfigResponse> {
        let r = request.into_inner();
        let config = describe::config(&metadata::configuration(&self.app, &r.name, version(&r.version))?);
        Ok(Response::new(ModelConfigResponse { config: Some(config) }))
    }

    async fn model_infer(&self, request: Request<ModelInferRequest>) -> Reply<ModelInferResponse> {
        let timeout = infer::grpc_timeout(request.metadata());
        infer::one(self.app.clone(), request.into_inner(), timeout).await.map(Response::new)
    }

    type ModelStreamInferStream = Pin<Box<dyn Stream<Item = Result<ModelStreamInferResponse, Status>> + Send + 'static>>;

    async fn model_stream_infer(&self, request: Request<Streaming<ModelInferRequest>>) -> Reply<Self::ModelStreamInferStream> {
        Ok(Response::new(infer::stream(self.app.clone(), request.into_inner())))
    }

    /// One model (at the named version, or the one routing picks), as
    /// REST; with no name, every model and version this gateway knows.
    async fn model_statistics(&self, request: Request<ModelStatisticsRequest>) -> Reply<ModelStatisticsResponse> {
        let r = request.into_inner();
        if r.name.is_empty() {
            let models = self.app.fleet.models().into_keys();
            let model_stats = models.flat_map(|(name, version)| describe::statistics(&self.app.v2_stats.of(&name, &version).json(&name, &version))).collect();
            return Ok(Response::new(ModelStatisticsResponse { model_stats }));
        }
        let model_stats = describe::statistics(&stats::of_model(&self.app, &r.name, version(&r.version))?);
        Ok(Response::new(ModelStatisticsResponse { model_stats }))
    }

    async fn repository_index(&self, request: Request<RepositoryIndexRequest>) -> Reply<RepositoryIndexResponse> {
        let ready_only = request.into_inner().ready;
        let mut models = describe::index(&repository::entries(&self.app));
        if ready_only {
            models.retain(|m| m.state == "READY");
        }
        Ok(Response::new(RepositoryIndexResponse { models }))
    }

    async fn repository_model_load(&self, _: Request<RepositoryModelLoadRequest>) -> Reply<RepositoryModelLoadResponse> {
        Err(not_offered("RepositoryModelLoad", LIFECYCLE))
    }

    async fn repository_model_unload(&self, _: Request<RepositoryModelUnloadRequest>) -> Reply<RepositoryModelUnloadResponse> {
        Err(not_offered("RepositoryModelUnload", LIFECYCLE))
    }

    async fn system_shared_memory_status(&self, request: Request<SystemSharedMemoryStatusRequest>) -> Reply<SystemSharedMemoryStatusResponse> {
        let name = request.into_inner().name;
        let regions = system_shm::registry(&self.app)?.status(version(&name)).map_err(ApiError::from)?;
        let regions = regions
            .into_iter()
            .map(|r| {
                let status = system_shared_memory_status_response::RegionStatus { name: r.name.clone(), key: r.key, offset: r.offset, byte_size: r.byte_size };
                (r.name, status)
            })
            .collect();
        Ok(Response::new(SystemSharedMemoryStatusResponse { regions }))
    }

    async fn system_shared_memory_register(&self, request: Request<SystemSharedMemoryRegisterRequest>) -> Reply<SystemSharedMemoryRegisterResponse> {
        let r = request.into_inner();
        let status = system_shm::registry(&self.app)?.register(&r.name, &r.key, r.offset, r.byte_size).map_err(ApiError::from)?;
        tracing::info!(region = %status.name, key = %status.key, offset = status.offset, byte_size = status.byte_size, "shared memory region registered");
        Ok(Response::new(SystemSharedMemoryRegisterResponse {}))
    }

    /// An empty name unregisters every region, as Triton does.
    async fn system_shared_memory_unregister(&self, request: Request<SystemSharedMemoryUnregisterRequest>) -> Reply<SystemSharedMemoryUnregisterResponse> {
        let name = request.into_inner().name;
        let registry = system_shm::registry(&self.app)?;
        match version(&name) {
            None => registry.unregister_all(),
            Some(name) => registry.unregister(name),
        }
        .map_err(ApiError::from)?;
        tracing::info!(region = %name, "shared memory region unregistered");
        Ok(Response::new(SystemSharedMemoryUnregisterResponse {}))
    }

    async fn cuda_shared_memory_status(&self, _: Request<CudaSharedMemoryStatusRequest>) -> Reply<CudaSharedMemoryStatusResponse> {
        Err(not_offered("CUDA shared memory", "the gateway never touches a GPU; use system shared memory"))
    }

    async fn cuda_shared_memory_register(&self, _: Request<CudaSharedMemoryRegisterRequest>) -> Reply<CudaSharedMemoryRegisterResponse> {
        Err(not_offered("CUDA shared memory", "the gateway never touches a GPU; use system shared memory"))
    }

    async fn cuda_shared_memory_unregister(&self, _: Request<CudaSharedMemoryUnregisterRequest>) -> Reply<CudaSharedMemoryUnregisterResponse> {
        Err(not_offered("CUDA shared memory", "the gateway never touches a GPU; use system shared memory"))
    }

    async fn trace_setting(&self, _: Request<TraceSettingRequest>) -> Reply<TraceSettingResponse> {
        Err(not_offered("TraceSetting", "logs are set with RUST_LOG at start"))
    }

    async fn log_settings(&self, _: Request<LogSettingsRequest>) -> Reply<LogSettingsResponse> {
        Err(not_offered("LogSettings", "logs are set with RUST_LOG and --log-format at start"))
    }
}
