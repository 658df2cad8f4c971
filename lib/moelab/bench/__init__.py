"""The performance benchmark: moelab against dense and naive baselines, side by side."""
