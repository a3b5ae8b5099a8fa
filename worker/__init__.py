"""The dffmpeg worker: registers with the coordinator and runs the jobs it is given."""
