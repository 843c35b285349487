//! One client's way of sending a prepared request: an HTTP body (v1
//! predict, or v2 infer with binary tensor data) or a gRPC ModelInfer.
//! Requests are built once per file, so the client's formatting is not
//! what is measured. A clone shares the connection pool (HTTP) or the
//! channel (gRPC) and the prepared requests.

use anyhow::Context;
use gateway_grpc_proto::ModelInferRequest;
use gateway_grpc_proto::grpc_inference_service_client::GrpcInferenceServiceClient;
use gateway_grpc_proto::model_infer_request::InferInputTensor;

use crate::{Args, Protocol};

pub type GrpcClient = GrpcInferenceServiceClient<tonic::transport::Channel>;

/// One client's connection and its prepared requests, one per file.
pub enum Sender {
    Http { client: reqwest::Client, url: String, headers: reqwest::header::HeaderMap, bodies: Vec<bytes::Bytes> },
    Grpc { client: GrpcClient, requests: Vec<ModelInferRequest> },
}

impl Sender {
    pub async fn new(args: &Args, http: &reqwest::Client, url: &str, files: &[bytes::Bytes]) -> anyhow::Result<Self> {
        let pixels_input = |size: usize| {
            serde_json::json!({"name": "PIXELS", "datatype": "UINT8", "shape": args.shape, "parameters": {"binary_data_size": size}})
        };
        Ok(match args.protocol {
            Protocol::Body => {
                let mut headers = reqwest::header::HeaderMap::new();
                headers.insert("content-type", args.content_type.parse()?);
                // Bytes: each client's copy of the list shares the files.
                let bodies = files.to_vec();
                Sender::Http { client: http.clone(), url: url.to_string(), headers, bodies }
            }
            Protocol::V2Binary => {
                let mut headers = reqwest::header::HeaderMap::new();
                let mut bodies = Vec::new();
                for f in files {
                    let header = serde_json::json!({"inputs": [pixels_input(f.len())],
                        "outputs": [{"name": "PROBABILITIES", "parameters": {"binary_data": true}}]})
                    .to_string();
                    headers.insert("inference-header-content-length", header.len().into());
                    bodies.push(bytes::Bytes::from([header.as_bytes(), f.as_ref()].concat()));
                }
                headers.insert("content-type", "application/octet-stream".parse()?);
                Sender::Http { client: http.clone(), url: url.to_string(), headers, bodies }
            }
            Protocol::Grpc => {
                let channel = tonic::transport::Channel::from_shared(url.to_string())?.connect().await.with_context(|| format!("connecting to {url}"))?;
                let requests = files
                    .iter()
                    .map(|f| ModelInferRequest {
                        model_name: args.model.clone(),
                        inputs: vec![InferInputTensor { name: "PIXELS".into(), datatype: "UINT8".into(), shape: args.shape.clone(), ..Default::default() }],
                        raw_input_contents: vec![f.clone()],
                        ..Default::default()
                    })
                    .collect();
                Sender::Grpc { client: GrpcInferenceServiceClient::new(channel), requests }
            }
        })
    }

    /// Sends request `i` (mod the files); whether it was answered in full.
    /// `&self`: the open loop sends many at once through one sender.
    pub async fn send(&self, i: usize) -> bool {
        match self {
            Sender::Http { client, url, headers, bodies } => {
                // Bytes: a clone is a reference count, not a copy of the image.
                let body = bodies[i % bodies.len()].clone();
                match client.post(url.as_str()).headers(headers.clone()).body(body).send().await {
                    Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                    Err(_) => false,
                }
            }
            Sender::Grpc { client, requests } => {
                // A clone of the client is a handle on the same channel.
                let request = requests[i % requests.len()].clone();
                client.clone().model_infer(request).await.is_ok()
            }
        }
    }
}
