"""The one seam between the server's round loop and the sites: in-process here, gRPC later."""
