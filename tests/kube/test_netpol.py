"""The NetworkPolicy built for a team namespace (pure)."""

from __future__ import annotations

from spawner_ext.kube.netpol import HubPeers, team_network_policy

PEERS = HubPeers(
    namespace="jhub",
    hub_ports=(8081, 10101),
    notebook_port=8888,
    pod_component="singleuser-server",
    install="jhub",
)


def test_notebook_pods_take_connections_only_from_the_hubs_labelled_pods() -> None:
    policy = team_network_policy("gpuhub-vision", "vision", PEERS)
    assert policy["metadata"]["namespace"] == "gpuhub-vision"
    assert policy["metadata"]["labels"]["gpuhub.io/team"] == "vision"
    spec = policy["spec"]
    assert spec["podSelector"] == {"matchLabels": {"component": "singleuser-server"}}
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    [ingress] = spec["ingress"]
    assert ingress["ports"] == [{"port": 8888, "protocol": "TCP"}]
    assert ingress["from"] == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "jhub"}},
            "podSelector": {"matchLabels": {"hub.jupyter.org/network-access-singleuser": "true"}},
        }
    ]


def test_notebook_pods_reach_the_hub_dns_and_the_internet_but_no_private_address() -> None:
    egress = team_network_policy("gpuhub-vision", "vision", PEERS)["spec"]["egress"]
    to_hub = egress[0]
    assert to_hub["to"][0]["namespaceSelector"] == {
        "matchLabels": {"kubernetes.io/metadata.name": "jhub"}
    }
    assert to_hub["to"][0]["podSelector"] == {"matchLabels": {"component": "hub"}}
    assert [p["port"] for p in to_hub["ports"]] == [8081, 10101]
    assert egress[1]["to"][0]["podSelector"] == {"matchLabels": {"component": "proxy"}}
    dns = egress[2]
    assert {(p["port"], p["protocol"]) for p in dns["ports"]} == {(53, "UDP"), (53, "TCP")}
    [internet] = egress[3]["to"]
    assert internet["ipBlock"]["cidr"] == "0.0.0.0/0"
    assert set(internet["ipBlock"]["except"]) == {
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "169.254.169.254/32",
    }
    assert "ports" not in egress[3], "any port to the internet"
    # Nothing else: no rule opens private addresses on other ports.
    assert len(egress) == 4
