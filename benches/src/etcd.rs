//! The subset of etcd's v3 gRPC API the harness drives etcd with (`Range`, `Put`, `Watch`),
//! written out as prost messages and tonic calls.
//!
//! Why by hand: the generated equivalent needed `build.rs` to compile an etcd proto on every
//! build of qistatus, for a peer only the harness talks to. These messages follow
//! `etcdserverpb/rpc.proto` and `mvccpb/kv.proto` field for field (names and tags); fields
//! the harness never sets or reads are left out, which protobuf allows.

use http::uri::PathAndQuery;
use tonic::codec::Streaming;
use tonic::transport::Channel;
use tonic::{IntoRequest, IntoStreamingRequest, Response, Status};
use tonic_prost::ProstCodec;

/// `etcdserverpb.ResponseHeader`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ResponseHeader {
    /// The store revision when the request was applied.
    #[prost(int64, tag = "3")]
    pub revision: i64,
}

/// `etcdserverpb.RangeRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RangeRequest {
    /// The first key of the range.
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    /// Serve from the local member without a quorum read.
    #[prost(bool, tag = "7")]
    pub serializable: bool,
}

/// `etcdserverpb.RangeResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RangeResponse {
    /// The header.
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    /// The keys found.
    #[prost(message, repeated, tag = "2")]
    pub kvs: Vec<KeyValue>,
}

/// `etcdserverpb.PutRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PutRequest {
    /// The key.
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    /// The value.
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

/// `etcdserverpb.PutResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PutResponse {
    /// The header, with the put's revision.
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
}

/// `etcdserverpb.WatchRequest`, with only its `create_request` case.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WatchRequest {
    /// Creates a watch.
    #[prost(message, optional, tag = "1")]
    pub create_request: Option<WatchCreateRequest>,
}

/// `etcdserverpb.WatchCreateRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WatchCreateRequest {
    /// The first key watched.
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    /// The end of the watched range (exclusive); empty: `key` alone.
    #[prost(bytes = "vec", tag = "2")]
    pub range_end: Vec<u8>,
}

/// `etcdserverpb.WatchResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WatchResponse {
    /// Whether this response confirms a created watch.
    #[prost(bool, tag = "3")]
    pub created: bool,
    /// The events.
    #[prost(message, repeated, tag = "11")]
    pub events: Vec<Event>,
}

/// `mvccpb.KeyValue`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct KeyValue {
    /// The key.
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    /// The revision of the last change of the key.
    #[prost(int64, tag = "3")]
    pub mod_revision: i64,
}

/// `mvccpb.Event`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Event {
    /// The key after the event.
    #[prost(message, optional, tag = "2")]
    pub kv: Option<KeyValue>,
}

/// A client of etcd's `KV` and `Watch` services over one channel.
#[derive(Clone)]
pub struct EtcdClient {
    grpc: tonic::client::Grpc<Channel>,
}

impl EtcdClient {
    /// A client over `channel`.
    pub fn new(channel: Channel) -> Self {
        EtcdClient {
            grpc: tonic::client::Grpc::new(channel),
        }
    }

    /// Connects to `url`.
    pub async fn connect(url: String) -> Result<Self, tonic::transport::Error> {
        Ok(EtcdClient::new(
            Channel::from_shared(url)
                .expect("a valid URL")
                .connect()
                .await?,
        ))
    }

    async fn ready(&mut self) -> Result<(), Status> {
        self.grpc
            .ready()
            .await
            .map_err(|e| Status::unavailable(format!("etcd is not ready: {e}")))
    }

    /// `KV/Range`.
    pub async fn range(&mut self, request: RangeRequest) -> Result<RangeResponse, Status> {
        self.ready().await?;
        let path = PathAndQuery::from_static("/etcdserverpb.KV/Range");
        let response: Response<RangeResponse> = self
            .grpc
            .unary(request.into_request(), path, ProstCodec::default())
            .await?;
        Ok(response.into_inner())
    }

    /// `KV/Put`.
    pub async fn put(&mut self, request: PutRequest) -> Result<PutResponse, Status> {
        self.ready().await?;
        let path = PathAndQuery::from_static("/etcdserverpb.KV/Put");
        let response: Response<PutResponse> = self
            .grpc
            .unary(request.into_request(), path, ProstCodec::default())
            .await?;
        Ok(response.into_inner())
    }

    /// `Watch/Watch`: the stream of responses to `requests`.
    pub async fn watch(
        &mut self,
        requests: impl IntoStreamingRequest<Message = WatchRequest>,
    ) -> Result<Streaming<WatchResponse>, Status> {
        self.ready().await?;
        let path = PathAndQuery::from_static("/etcdserverpb.Watch/Watch");
        let response = self
            .grpc
            .streaming(
                requests.into_streaming_request(),
                path,
                ProstCodec::default(),
            )
            .await?;
        Ok(response.into_inner())
    }
}

/// The end of the range of every key that starts with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}
