"""Analysis of runs: diagnostics, forecasts and plots, simulation, calibration (SBC), backtests."""
