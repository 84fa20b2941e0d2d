"""Karpenter-style node provisioning and consolidation on a (simulated) cloud.

Karpenter v1's API (NodePool, NodeClaim in karpenter.sh/v1) plus a simulated cloud's SimNodeClass;
an instance-type catalogue with prices (catalog.py, data/instance_types.json); provisioning of
unschedulable pods (controller.py, binpack.py); disruption (disruption.py); the cloud seam (cloud.py).
Depends only on ultraplane.client and the lower layers (nodes for the simulated instances).
"""
