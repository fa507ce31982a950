"""Privacy: secure aggregation (the server learns only the sum) and differential privacy (what a
site sends reveals little about one patient, DP-SGD; or about one site, DP-FedAvg)."""
