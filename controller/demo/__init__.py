"""The parts of `lepton demo`: broker, device profiles, agents, live view, summary."""
