//! `DeviceInfo`: what a device tells the framework about itself.

use std::time::Duration;

use crate::protocol::ProtocolFeatures;

/// A device's identity and limits.
///
/// The framework adds the transport feature bits it implements itself (VERSION_1, RING_PACKED,
/// LOG_ALL, INDIRECT_DESC, EVENT_IDX, PROTOCOL_FEATURES) to `features`, and the
/// protocol features it implements (MQ, LOG_SHMFD, REPLY_ACK, CONFIG, BACKEND_REQ,
/// RESET_DEVICE, CONFIGURE_MEM_SLOTS, STATUS) to what it offers. CONFIG is offered only
/// when `config_size` is not 0; INFLIGHT_SHMFD only when the device asks for it
/// ([`DeviceInfo::with_inflight_tracking`]).
///
/// # Example
/// ```
/// use vhost_user_sync::device::DeviceInfo;
/// let info = DeviceInfo::new("rng", 4, 1).with_features(1 << 3).with_max_queue_size(512);
/// assert_eq!((info.device_type, info.num_queues, info.max_queue_size), (4, 1, 512));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Short name for logs ("rng", "net", "blk").
    pub name: String,
    /// Virtio device id (1 net, 2 blk, 4 rng, ...).
    pub device_type: u32,
    /// Number of queues.
    pub num_queues: u16,
    /// Largest queue size accepted (a power of two, at most 32768).
    pub max_queue_size: u16,
    /// Device-specific feature bits offered.
    pub features: u64,
    /// Transport bits the device does not want offered (masked off).
    pub masked_features: u64,
    /// Protocol features offered beyond the framework's. Requests that belong to them
    /// and that the framework does not handle are refused, so only name features whose
    /// requests the framework handles (or that only change what the device does).
    pub protocol_features: ProtocolFeatures,
    /// Size of the config space in bytes (0: none).
    pub config_size: u32,
    /// How long a worker keeps polling its rings after the last chain before it asks
    /// for kicks again and sleeps (zero, the default: never poll). Polling trades a CPU
    /// for fewer kicks and wake-ups under load; a listener's
    /// [`with_busy_poll`](crate::VhostUserListener::with_busy_poll) overrides it.
    pub busy_poll: Duration,
}

impl DeviceInfo {
    /// A device named `name` of virtio type `device_type` with `num_queues` queues.
    pub fn new(name: &str, device_type: u32, num_queues: u16) -> Self {
        DeviceInfo {
            name: name.to_string(),
            device_type,
            num_queues,
            max_queue_size: 1024,
            features: 0,
            masked_features: 0,
            protocol_features: ProtocolFeatures::EMPTY,
            config_size: 0,
            busy_poll: Duration::ZERO,
        }
    }

    /// With device feature bits.
    pub fn with_features(mut self, features: u64) -> Self {
        self.features = features;
        self
    }

    /// With a different largest queue size.
    pub fn with_max_queue_size(mut self, size: u16) -> Self {
        self.max_queue_size = size;
        self
    }

    /// With extra protocol features.
    pub fn with_protocol_features(mut self, features: ProtocolFeatures) -> Self {
        self.protocol_features = features;
        self
    }

    /// Offers `VHOST_USER_PROTOCOL_F_DEVICE_STATE`: the frontend may save the device's
    /// own state ([`Device::save_state`](crate::device::Device::save_state)) and load it
    /// into a device of another backend process ([`Device::load_state`](crate::device::Device::load_state)),
    /// for migration and snapshots.
    ///
    /// ```
    /// use vhost_user_sync::device::DeviceInfo;
    /// use vhost_user_sync::protocol::ProtocolFeatures;
    /// let info = DeviceInfo::new("counter", 0xffff, 1).with_device_state();
    /// assert!(info.protocol_features.contains(ProtocolFeatures::DEVICE_STATE));
    /// ```
    pub fn with_device_state(mut self) -> Self {
        self.protocol_features |= ProtocolFeatures::DEVICE_STATE;
        self
    }

    /// With a config space of `size` bytes.
    pub fn with_config_size(mut self, size: u32) -> Self {
        self.config_size = size;
        self
    }

    /// With in-flight tracking (VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD): the framework
    /// records each chain the device takes in an area the frontend keeps, and a backend
    /// started again after a crash is handed the chains that were in flight before
    /// anything new, oldest first. Devices whose requests have side effects (a disk)
    /// want it. Split and packed rings.
    ///
    /// ```
    /// use vhost_user_sync::device::DeviceInfo;
    /// use vhost_user_sync::protocol::ProtocolFeatures;
    /// let info = DeviceInfo::new("blk", 2, 1).with_inflight_tracking();
    /// assert!(info.protocol_features.contains(ProtocolFeatures::INFLIGHT_SHMFD));
    /// ```
    pub fn with_inflight_tracking(mut self) -> Self {
        self.protocol_features |= ProtocolFeatures::INFLIGHT_SHMFD;
        self
    }

    /// With workers that poll their rings for `time` after the last chain.
    pub fn with_busy_poll(mut self, time: Duration) -> Self {
        self.busy_poll = time;
        self
    }

    /// Without some transport bits (for example EVENT_IDX).
    pub fn without_features(mut self, bits: u64) -> Self {
        self.masked_features |= bits;
        self
    }
}
