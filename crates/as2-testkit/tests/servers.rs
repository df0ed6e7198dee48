//! The servers the test kit starts are real and stop when dropped.

use std::io::{Read, Write};
use std::net::TcpStream;

fn redis_command(port: u16, command: &[u8]) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to redis");
    stream.write_all(command).expect("send");
    let mut buf = [0_u8; 64];
    let n = stream.read(&mut buf).expect("read");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn redis_starts_stores_and_restarts_empty() {
    let mut redis = as2_testkit::RedisServer::start();
    assert!(redis.url().starts_with("redis://127.0.0.1:"));
    assert_eq!(redis_command(redis.port(), b"SET k v\r\n"), "+OK\r\n");
    assert_eq!(redis_command(redis.port(), b"GET k\r\n"), "$1\r\nv\r\n");
    redis.restart();
    assert_eq!(redis_command(redis.port(), b"GET k\r\n"), "$-1\r\n");
    let port = redis.port();
    drop(redis);
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "redis still listening after drop"
    );
}

#[test]
fn a_durable_redis_keeps_what_it_acknowledged_across_a_kill() {
    let mut redis = as2_testkit::RedisServer::start_durable();
    assert_eq!(redis_command(redis.port(), b"SET k v\r\n"), "+OK\r\n");
    // restart kills the process (SIGKILL): only the append-only file brings `k` back.
    redis.restart();
    assert_eq!(redis_command(redis.port(), b"GET k\r\n"), "$1\r\nv\r\n");
}

#[test]
fn redis_cluster_has_three_masters_sharing_the_slots_and_stops() {
    let cluster = as2_testkit::RedisCluster::start();
    let ports = cluster.ports();
    assert_eq!(ports.len(), 3);
    assert!(cluster.url().starts_with("redis+cluster://127.0.0.1:"));
    // A key lives on one node; the others redirect to it.
    let answers: Vec<String> = ports
        .iter()
        .map(|port| redis_command(*port, b"SET cluster-key v\r\n"))
        .collect();
    assert_eq!(
        answers.iter().filter(|answer| *answer == "+OK\r\n").count(),
        1
    );
    assert_eq!(
        answers
            .iter()
            .filter(|answer| answer.starts_with("-MOVED"))
            .count(),
        2,
        "{answers:?}"
    );
    drop(cluster);
    for port in ports {
        assert!(
            TcpStream::connect(("127.0.0.1", port)).is_err(),
            "cluster node still listening after drop"
        );
    }
}

#[test]
fn kafka_broker_accepts_connections_and_stops() {
    let mut broker = as2_testkit::KafkaBroker::start();
    let port = broker.port();
    assert!(TcpStream::connect(("127.0.0.1", port)).is_ok());
    broker.stop();
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "broker still listening after stop"
    );
    broker.restart();
    assert!(TcpStream::connect(("127.0.0.1", port)).is_ok());
}

#[test]
fn interop_python_has_pyas2lib() {
    let status = std::process::Command::new(as2_testkit::python())
        .args(["-c", "import pyas2lib, pyas2"])
        .status()
        .expect("run python");
    assert!(status.success(), "pyas2lib / django-pyas2 not importable");
}
