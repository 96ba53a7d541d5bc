//! Constructors of model objects from k8s-openapi types and from JSON values.

use std::net::IpAddr;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::*;

fn name_of(meta: &ObjectMeta, kind: &str) -> Result<String, ModelError> {
    match &meta.name {
        Some(n) if !n.is_empty() => Ok(n.clone()),
        _ => Err(ModelError::MissingName { kind: kind.into() }),
    }
}

fn namespace_of(meta: &ObjectMeta) -> String {
    meta.namespace
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "default".to_string())
}

fn port_u16(v: i32, kind: &str, name: &str) -> Result<u16, ModelError> {
    u16::try_from(v)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| ModelError::Field {
            kind: kind.into(),
            name: name.into(),
            message: format!("port {v} out of range"),
        })
}

fn pod_ref(r: &Option<core::ObjectReference>, default_ns: &str) -> Option<ObjectRef> {
    let r = r.as_ref()?;
    if r.kind.as_deref().is_some_and(|k| k != "Pod") {
        return None;
    }
    let name = r.name.clone()?;
    let ns = r
        .namespace
        .clone()
        .unwrap_or_else(|| default_ns.to_string());
    Some(ObjectRef::new(ns, name))
}

pub fn from_k8s_namespace(ns: &core::Namespace) -> Result<Namespace, ModelError> {
    Ok(Namespace {
        name: name_of(&ns.metadata, "Namespace")?,
        annotations: ns.metadata.annotations.clone().unwrap_or_default(),
    })
}

pub fn from_k8s_service_account(sa: &core::ServiceAccount) -> Result<ServiceAccount, ModelError> {
    Ok(ServiceAccount {
        namespace: namespace_of(&sa.metadata),
        name: name_of(&sa.metadata, "ServiceAccount")?,
    })
}

/// A model [`Pod`] from a Kubernetes Pod.
pub fn from_k8s_pod(pod: &core::Pod) -> Result<Pod, ModelError> {
    let name = name_of(&pod.metadata, "Pod")?;
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    let status = pod.status.as_ref();
    let ip = status
        .and_then(|s| {
            s.pod_ip
                .clone()
                .or_else(|| s.pod_ips.as_ref()?.first().map(|p| p.ip.clone()))
        })
        .and_then(|ip| ip.parse::<IpAddr>().ok());
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let spec = pod.spec.as_ref();
    let service_account = spec
        .and_then(|s| s.service_account_name.clone())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".to_string());
    let mut container_ports = Vec::new();
    let mut http_probes = Vec::new();
    for c in spec.map(|s| s.containers.as_slice()).unwrap_or_default() {
        for p in c.ports.iter().flatten() {
            container_ports.push(ContainerPort {
                name: p.name.clone(),
                port: port_u16(p.container_port, "Pod", &name)?,
                protocol: L4Protocol::parse(p.protocol.as_deref()),
            });
        }
        for (kind, probe) in [
            (ProbeKind::Readiness, &c.readiness_probe),
            (ProbeKind::Liveness, &c.liveness_probe),
            (ProbeKind::Startup, &c.startup_probe),
        ] {
            if let Some(get) = probe.as_ref().and_then(|p| p.http_get.as_ref()) {
                http_probes.push(http_probe(kind, get, &name)?);
            }
        }
    }
    http_probes.sort();
    http_probes.dedup();
    let workload = crate::inject::workload_of(
        pod.metadata
            .owner_references
            .iter()
            .flatten()
            .map(|o| crate::inject::OwnerRef {
                kind: &o.kind,
                name: &o.name,
                controller: o.controller == Some(true),
            }),
        labels.get("pod-template-hash").map(String::as_str),
    );
    Ok(Pod {
        workload,
        namespace: namespace_of(&pod.metadata),
        meshed: labels.contains_key(PROXY_VERSION_LABEL),
        name,
        ip,
        labels,
        annotations: pod.metadata.annotations.clone().unwrap_or_default(),
        service_account,
        ready,
        container_ports,
        http_probes,
    })
}

fn http_probe(
    kind: ProbeKind,
    get: &core::HTTPGetAction,
    pod: &str,
) -> Result<HttpProbe, ModelError> {
    let port = match &get.port {
        IntOrString::Int(n) => PortRef::Number(port_u16(*n, "Pod", pod)?),
        IntOrString::String(s) => match s.parse::<i32>() {
            Ok(n) => PortRef::Number(port_u16(n, "Pod", pod)?),
            Err(_) => PortRef::Name(s.clone()),
        },
    };
    // The kubelet sends the path as given (default `/`); a query string is not part of it.
    let raw = get.path.as_deref().unwrap_or("");
    let path = raw.split(['?', '#']).next().unwrap_or("");
    let path = if path.is_empty() {
        "/".to_string()
    } else if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    };
    Ok(HttpProbe {
        kind,
        port,
        path,
        https: get
            .scheme
            .as_deref()
            .is_some_and(|s| s.eq_ignore_ascii_case("HTTPS")),
    })
}

/// A model [`Service`] from a Kubernetes Service.
pub fn from_k8s_service(svc: &core::Service) -> Result<Service, ModelError> {
    let name = name_of(&svc.metadata, "Service")?;
    let spec = svc.spec.clone().unwrap_or_default();
    let mut ips: Vec<String> = spec.cluster_ips.clone().unwrap_or_default();
    if ips.is_empty() {
        ips.extend(spec.cluster_ip.clone());
    }
    let cluster_ips = ips
        .iter()
        .filter_map(|ip| ip.parse::<IpAddr>().ok())
        .collect();
    let mut ports = Vec::new();
    for p in spec.ports.iter().flatten() {
        let port = port_u16(p.port, "Service", &name)?;
        let target_port = match &p.target_port {
            None => TargetPort::Number(port),
            Some(IntOrString::Int(n)) => TargetPort::Number(port_u16(*n, "Service", &name)?),
            Some(IntOrString::String(s)) => match s.parse::<i32>() {
                Ok(n) => TargetPort::Number(port_u16(n, "Service", &name)?),
                Err(_) => TargetPort::Name(s.clone()),
            },
        };
        ports.push(ServicePort {
            name: p.name.clone().filter(|n| !n.is_empty()),
            port,
            protocol: L4Protocol::parse(p.protocol.as_deref()),
            app_protocol: p.app_protocol.clone(),
            target_port,
        });
    }
    Ok(Service {
        namespace: namespace_of(&svc.metadata),
        name,
        cluster_ips,
        ports,
        selector: spec.selector.clone(),
        annotations: svc.metadata.annotations.clone().unwrap_or_default(),
    })
}

/// A model [`EndpointGroup`] from a discovery.k8s.io/v1 EndpointSlice.
pub fn from_k8s_endpoint_slice(
    slice: &discovery::EndpointSlice,
) -> Result<EndpointGroup, ModelError> {
    let name = name_of(&slice.metadata, "EndpointSlice")?;
    let namespace = namespace_of(&slice.metadata);
    let service = slice
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_NAME_LABEL).cloned());
    let mut ports = Vec::new();
    for p in slice.ports.iter().flatten() {
        // A port without a number means "all ports" and is not usable for routing.
        let Some(n) = p.port else { continue };
        ports.push(EndpointPort {
            name: p.name.clone().filter(|n| !n.is_empty()),
            port: port_u16(n, "EndpointSlice", &name)?,
            protocol: L4Protocol::parse(p.protocol.as_deref()),
        });
    }
    let mut addresses = Vec::new();
    for e in &slice.endpoints {
        let ready = e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
        let pod = pod_ref(&e.target_ref, &namespace);
        for a in &e.addresses {
            if let Ok(ip) = a.parse::<IpAddr>() {
                addresses.push(EndpointAddress {
                    ip,
                    ready,
                    pod: pod.clone(),
                });
            }
        }
    }
    Ok(EndpointGroup {
        source: EndpointSource::EndpointSlice,
        namespace,
        name,
        service,
        subsets: vec![EndpointSubset { ports, addresses }],
    })
}

/// A model [`EndpointGroup`] from a core v1 Endpoints.
#[allow(deprecated)]
pub fn from_k8s_endpoints(ep: &core::Endpoints) -> Result<EndpointGroup, ModelError> {
    let name = name_of(&ep.metadata, "Endpoints")?;
    let namespace = namespace_of(&ep.metadata);
    let mut subsets = Vec::new();
    for s in ep.subsets.iter().flatten() {
        let mut ports = Vec::new();
        for p in s.ports.iter().flatten() {
            ports.push(EndpointPort {
                name: p.name.clone().filter(|n| !n.is_empty()),
                port: port_u16(p.port, "Endpoints", &name)?,
                protocol: L4Protocol::parse(p.protocol.as_deref()),
            });
        }
        let mut addresses = Vec::new();
        for (list, ready) in [(&s.addresses, true), (&s.not_ready_addresses, false)] {
            for a in list.iter().flatten() {
                if let Ok(ip) = a.ip.parse::<IpAddr>() {
                    addresses.push(EndpointAddress {
                        ip,
                        ready,
                        pod: pod_ref(&a.target_ref, &namespace),
                    });
                }
            }
        }
        subsets.push(EndpointSubset { ports, addresses });
    }
    Ok(EndpointGroup {
        source: EndpointSource::Endpoints,
        service: Some(name.clone()),
        namespace,
        name,
        subsets,
    })
}

fn de<T: serde::de::DeserializeOwned>(v: serde_json::Value, kind: &str) -> Result<T, ModelError> {
    serde_json::from_value(v).map_err(|source| ModelError::Invalid {
        kind: kind.into(),
        source,
    })
}

/// See [`ClusterObject::from_value`].
#[allow(deprecated)]
pub(super) fn from_value(value: &serde_json::Value) -> Result<ClusterObject, ModelError> {
    let kind = value
        .get("kind")
        .and_then(|k| k.as_str())
        .ok_or(ModelError::MissingKind)?;
    let api_version = value
        .get("apiVersion")
        .and_then(|k| k.as_str())
        .ok_or(ModelError::MissingApiVersion)?;
    let group = api_version.rsplit_once('/').map(|(g, _)| g).unwrap_or("");
    let unsupported = || ModelError::UnsupportedKind {
        api_version: api_version.into(),
        kind: kind.into(),
    };
    match (group, kind) {
        ("", "Namespace") => Ok(ClusterObject::Namespace(from_k8s_namespace(&de(
            value.clone(),
            kind,
        )?)?)),
        ("", "ServiceAccount") => Ok(ClusterObject::ServiceAccount(from_k8s_service_account(
            &de(value.clone(), kind)?,
        )?)),
        ("", "Pod") => Ok(ClusterObject::Pod(from_k8s_pod(&de(value.clone(), kind)?)?)),
        ("", "Service") => Ok(ClusterObject::Service(from_k8s_service(&de(
            value.clone(),
            kind,
        )?)?)),
        ("", "Endpoints") => Ok(ClusterObject::Endpoints(from_k8s_endpoints(&de(
            value.clone(),
            kind,
        )?)?)),
        ("discovery.k8s.io", "EndpointSlice") => {
            // v1beta1 has the same shape for everything weft reads.
            let mut v = value.clone();
            if let Some(obj) = v.as_object_mut() {
                obj.insert(
                    "apiVersion".into(),
                    serde_json::Value::String("discovery.k8s.io/v1".into()),
                );
            }
            Ok(ClusterObject::Endpoints(from_k8s_endpoint_slice(&de(
                v, kind,
            )?)?))
        }
        (g, _) if g.ends_with(".smi-spec.io") => smi_from_value(value).map(ClusterObject::Smi),
        (super::gateway::GROUP, "HTTPRoute") if api_version == super::gateway::API_VERSION => {
            super::gateway::from_gateway_http_route(&de(value.clone(), kind)?)
                .map(ClusterObject::HttpRoute)
        }
        (super::gateway::GROUP, "GRPCRoute") if api_version == super::gateway::API_VERSION => {
            super::grpc::from_gateway_grpc_route(&de(value.clone(), kind)?)
                .map(ClusterObject::HttpRoute)
        }
        _ => Err(unsupported()),
    }
}

fn smi_from_value(value: &serde_json::Value) -> Result<hub::SmiObject, ModelError> {
    weft_smi::from_value(value).map_err(|e| match e {
        weft_smi::SmiError::NotSmi { api_version, kind } => {
            ModelError::UnsupportedKind { api_version, kind }
        }
        other => ModelError::Smi(other.to_string()),
    })
}
