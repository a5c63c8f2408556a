"""The front Apache: its config and the balancer-manager a deploy switches through."""
