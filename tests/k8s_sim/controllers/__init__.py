"""The simulated kube-controller-manager: each module is one controller (see runtime.py for how they run)."""
