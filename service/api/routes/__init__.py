"""Thin routes: parse, call one method of the control plane, return a response model."""
