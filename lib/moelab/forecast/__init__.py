"""Time-series forecasting with moelab's Transformer, scored against the forecasters' baselines."""
