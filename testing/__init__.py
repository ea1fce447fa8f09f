"""Test and benchmark helpers: clients of our protocols, fakes of our services, audio simulators (never imported by services/)."""
