//! End to end: a real Tern server (in process, real loopback HTTP and MQTT) and simulated
//! devices running the real device crate on simulated flash, connected over MQTT.

mod air_bench;
mod assets;
mod chaos;
mod cli;
mod commands;
mod device_os;
mod device_os_oracle;
mod fleet_sim;
mod heal;
mod resilience;
mod rollout;
mod rollout_bench;
mod support;
mod tls;
mod update;
