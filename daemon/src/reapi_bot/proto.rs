//! The Remote Workers API (`google.devtools.remoteworkers.v1test2`): no crate ships
//! it, so its few messages are written here by hand with the upstream field numbers
//! (bots.proto, worker.proto), reusing bazel-remote-apis' well-known types, and the
//! two calls a bot makes go through tonic's generic client.

use bazel_remote_apis::google::protobuf::{Any, Timestamp};
use bazel_remote_apis::google::rpc::Status;
use prost::Message;

#[derive(Clone, PartialEq, Message)]
pub struct BotSession {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub bot_id: String,
    #[prost(enumeration = "BotStatus", tag = "3")]
    pub status: i32,
    #[prost(message, optional, tag = "4")]
    pub worker: Option<Worker>,
    #[prost(message, repeated, tag = "5")]
    pub leases: Vec<Lease>,
    #[prost(message, optional, tag = "6")]
    pub expire_time: Option<Timestamp>,
    #[prost(string, tag = "7")]
    pub version: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum BotStatus {
    Unspecified = 0,
    Ok = 1,
    Unhealthy = 2,
    HostRebooting = 3,
    BotTerminating = 4,
}

#[derive(Clone, PartialEq, Message)]
pub struct Lease {
    #[prost(string, tag = "1")]
    pub assignment: String,
    #[prost(enumeration = "LeaseState", tag = "2")]
    pub state: i32,
    #[prost(message, optional, tag = "3")]
    pub status: Option<Status>,
    #[prost(message, optional, tag = "4")]
    pub requirements: Option<Worker>,
    #[prost(message, optional, tag = "5")]
    pub expire_time: Option<Timestamp>,
    #[prost(message, optional, tag = "6")]
    pub inline_assignment: Option<Any>,
    #[prost(string, tag = "7")]
    pub id: String,
    #[prost(message, optional, tag = "8")]
    pub payload: Option<Any>,
    #[prost(message, optional, tag = "9")]
    pub result: Option<Any>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum LeaseState {
    Unspecified = 0,
    Pending = 1,
    Active = 2,
    Completed = 4,
    Cancelled = 5,
}

#[derive(Clone, PartialEq, Message)]
pub struct Worker {
    #[prost(message, repeated, tag = "1")]
    pub devices: Vec<Device>,
    #[prost(message, repeated, tag = "2")]
    pub properties: Vec<Property>,
    #[prost(message, repeated, tag = "3")]
    pub configs: Vec<Property>,
}

/// `Worker.Property`, `Worker.Config` and `Device.Property` share one shape.
#[derive(Clone, PartialEq, Message)]
pub struct Property {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct Device {
    #[prost(string, tag = "1")]
    pub handle: String,
    #[prost(message, repeated, tag = "2")]
    pub properties: Vec<Property>,
}

#[derive(Clone, PartialEq, Message)]
pub struct CreateBotSessionRequest {
    #[prost(string, tag = "1")]
    pub parent: String,
    #[prost(message, optional, tag = "2")]
    pub bot_session: Option<BotSession>,
}

#[derive(Clone, PartialEq, Message)]
pub struct UpdateBotSessionRequest {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, optional, tag = "2")]
    pub bot_session: Option<BotSession>,
    /// A `google.protobuf.FieldMask`: one repeated string, `paths`.
    #[prost(message, optional, tag = "3")]
    pub update_mask: Option<FieldMask>,
}

#[derive(Clone, PartialEq, Message)]
pub struct FieldMask {
    #[prost(string, repeated, tag = "1")]
    pub paths: Vec<String>,
}

/// The type URL of an `Any` packing a REAPI message named `name`.
pub fn type_url(name: &str) -> String {
    format!("type.googleapis.com/{name}")
}

/// Unpacks `any` as message `M` named `name` (the type URL's last segment).
pub fn unpack<M: Message + Default>(any: &Any, name: &str) -> Option<M> {
    let ty = any.type_url.rsplit('/').next()?;
    (ty == name).then(|| M::decode(any.value.as_slice()).ok())?
}

/// Packs `m` as an `Any` named `name`.
pub fn pack<M: Message>(m: &M, name: &str) -> Any {
    Any {
        type_url: type_url(name),
        value: m.encode_to_vec(),
    }
}

/// The Bots service's two calls over a tonic channel.
#[derive(Clone)]
pub struct BotsClient {
    grpc: tonic::client::Grpc<super::Svc>,
}

const CREATE: &str = "/google.devtools.remoteworkers.v1test2.Bots/CreateBotSession";
const UPDATE: &str = "/google.devtools.remoteworkers.v1test2.Bots/UpdateBotSession";

impl BotsClient {
    pub fn new(channel: super::Svc) -> BotsClient {
        BotsClient {
            grpc: tonic::client::Grpc::new(channel),
        }
    }

    async fn call<Req, Resp>(
        &mut self,
        path: &'static str,
        req: tonic::Request<Req>,
    ) -> Result<Resp, tonic::Status>
    where
        Req: Message + Send + Sync + 'static,
        Resp: Message + Default + Send + Sync + 'static,
    {
        self.grpc
            .ready()
            .await
            .map_err(|e| tonic::Status::unavailable(format!("channel not ready: {e}")))?;
        let codec = tonic_prost::ProstCodec::<Req, Resp>::default();
        let path = tonic::codegen::http::uri::PathAndQuery::from_static(path);
        Ok(self.grpc.unary(req, path, codec).await?.into_inner())
    }

    pub async fn create(
        &mut self,
        req: tonic::Request<CreateBotSessionRequest>,
    ) -> Result<BotSession, tonic::Status> {
        self.call(CREATE, req).await
    }

    pub async fn update(
        &mut self,
        req: tonic::Request<UpdateBotSessionRequest>,
    ) -> Result<BotSession, tonic::Status> {
        self.call(UPDATE, req).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The field numbers are the wire format: a lease encoded here decodes with the
    /// tags bots.proto gives (id = 7, payload = 8, state = 2).
    #[test]
    fn lease_fields_have_the_upstream_numbers() {
        let l = Lease {
            id: "x".into(),
            state: LeaseState::Active as i32,
            ..Default::default()
        };
        // tag 2 varint 2, tag 7 length-delimited "x".
        assert_eq!(l.encode_to_vec(), [0x10, 0x02, 0x3a, 0x01, b'x']);
        let any = pack(&l, "google.devtools.remoteworkers.v1test2.Lease");
        let back: Lease = unpack(&any, "google.devtools.remoteworkers.v1test2.Lease").unwrap();
        assert_eq!(back, l);
        assert!(unpack::<Lease>(&any, "Other").is_none());
    }
}
