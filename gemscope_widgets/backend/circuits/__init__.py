"""Attribution graphs (circuit tracing): transcoder sets, the local replacement model, graphs, interventions."""
