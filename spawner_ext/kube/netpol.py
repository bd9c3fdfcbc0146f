"""The NetworkPolicy of a team namespace: notebook pods there are isolated as z2jh isolates the
ones in its own namespace (its `singleuser.networkPolicy` covers only that namespace). The builder
is pure; `sync_network_policy` applies it when the hub makes the namespace."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..wire import team_object_labels
from .converge import converge

POLICY_NAME = "gpuhub-singleuser"
PRIVATE_RANGES = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")
CLOUD_METADATA = "169.254.169.254/32"
SINGLEUSER_ACCESS_LABEL = "hub.jupyter.org/network-access-singleuser"
"""z2jh puts it on the hub's and the proxy's pods: the pods that may reach notebook servers."""


@dataclass(frozen=True)
class HubPeers:
    """Where the hub's side of a deployment is, seen from a team namespace."""

    namespace: str
    """The namespace of the hub's and the proxy's pods."""
    hub_ports: tuple[int, ...]
    """Ports of the hub's pod notebook servers use: the hub API, the gpuhub service."""
    notebook_port: int
    """The port notebook servers listen on (KubeSpawner's `port`)."""
    pod_component: str
    """The `component` label of notebook pods (KubeSpawner's `component_label`)."""
    install: str
    """The hub's install (spawner_ext/install.py), on the policy's labels."""


def team_network_policy(namespace: str, team: str, peers: HubPeers) -> dict[str, Any]:
    """Notebook pods of a team namespace take connections only from the hub's and the proxy's
    pods (those z2jh labels `hub.jupyter.org/network-access-singleuser`) in the hub's namespace,
    on the notebook port; they reach the hub's ports, the proxy, DNS, and the internet, but not
    other private addresses (other teams' pods, the nodes) nor the cloud metadata server. These
    are z2jh's `singleuser.networkPolicy` defaults, for pods outside its namespace."""
    hub_namespace = {"kubernetes.io/metadata.name": peers.namespace}

    def in_hub_namespace(component: str) -> dict[str, Any]:
        return {
            "namespaceSelector": {"matchLabels": hub_namespace},
            "podSelector": {"matchLabels": {"component": component}},
        }

    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": POLICY_NAME,
            "namespace": namespace,
            "labels": team_object_labels(team, peers.install),
        },
        "spec": {
            "podSelector": {"matchLabels": {"component": peers.pod_component}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [
                {
                    "ports": [{"port": peers.notebook_port, "protocol": "TCP"}],
                    "from": [
                        {
                            "namespaceSelector": {"matchLabels": hub_namespace},
                            "podSelector": {"matchLabels": {SINGLEUSER_ACCESS_LABEL: "true"}},
                        }
                    ],
                }
            ],
            "egress": [
                {
                    "to": [in_hub_namespace("hub")],
                    "ports": [{"port": port, "protocol": "TCP"} for port in peers.hub_ports],
                },
                {
                    "to": [in_hub_namespace("proxy")],
                    "ports": [{"port": 8000, "protocol": "TCP"}],
                },
                {
                    "to": [
                        {
                            "namespaceSelector": {
                                "matchLabels": {"kubernetes.io/metadata.name": "kube-system"}
                            }
                        },
                        *({"ipBlock": {"cidr": cidr}} for cidr in PRIVATE_RANGES),
                    ],
                    "ports": [
                        {"port": 53, "protocol": "UDP"},
                        {"port": 53, "protocol": "TCP"},
                    ],
                },
                {
                    "to": [
                        {
                            "ipBlock": {
                                "cidr": "0.0.0.0/0",
                                "except": [*PRIVATE_RANGES, CLOUD_METADATA],
                            }
                        }
                    ]
                },
            ],
        },
    }


async def sync_network_policy(api: Any, manifest: dict[str, Any]) -> str | None:
    """Create or replace the policy so its spec is `manifest`'s; what changed, or None.
    `api` is a NetworkingV1Api. The policy is the hub's: a changed spec is put back (to allow
    more, add a NetworkPolicy of your own beside it; policies add up)."""
    done = await converge(
        api, "network_policy", manifest, lambda current: _spec_of(api, current) == manifest["spec"]
    )
    if done is None:
        return None
    namespace = manifest["metadata"]["namespace"]
    if done[0] == "created":
        return f"{namespace}: created NetworkPolicy {POLICY_NAME}"
    if done[0] == "foreign":
        return f"{namespace}: NetworkPolicy {POLICY_NAME} is another install's; left alone"
    return f"{namespace}: NetworkPolicy {POLICY_NAME} put back as the hub has it"


def _spec_of(api: Any, policy: Any) -> Any:
    """The policy's spec as a manifest would write it (camelCase keys, no empty fields)."""
    return api.api_client.sanitize_for_serialization(policy).get("spec")
