"""`fraud bench`: the decision path under open-loop load, with a naive baseline beside it."""
