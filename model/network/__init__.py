"""The preference LSTM, its local training (plain or DP-SGD) and on-device personalisation."""
