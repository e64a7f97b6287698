//! The real Sense HAT on a Linux I2C bus (`/dev/i2c-1` on every Raspberry Pi with a 40-pin
//! header), through `linux-embedded-hal`, which selects each address with the plain `I2C_SLAVE`
//! ioctl: when a kernel driver owns an address the kernel answers EBUSY, and this module turns
//! that into an error naming the driver and the fix. Nothing here ever force-binds an address.

use std::io;
use std::path::Path;

use linux_embedded_hal::{Delay, I2CError, I2cdev};

use super::{BusErrorHint, SenseHat, Sensor, SensorError};

const ENABLE_I2C: &str = "enable I2C with `sudo raspi-config nonint do_i2c 0` (or dtparam=i2c_arm=on in config.txt) and reboot";
const JOIN_GROUP: &str = "add the user to the i2c group (`sudo usermod -aG i2c $USER`, then log in again); the systemd unit does this with SupplementaryGroups=i2c";

/// The bus number of `/dev/i2c-N`, for sysfs paths.
fn bus_number(path: &str) -> Option<u32> {
    path.strip_prefix("/dev/i2c-")?.parse().ok()
}

/// The kernel driver bound to an address of the bus, if any (`/sys/bus/i2c/devices/N-00XX/driver`).
pub fn kernel_driver(bus: u32, address: u8) -> Option<String> {
    let link = Path::new("/sys/bus/i2c/devices")
        .join(format!("{bus}-{address:04x}"))
        .join("driver");
    let target = std::fs::read_link(link).ok()?;
    Some(target.file_name()?.to_string_lossy().into_owned())
}

fn owned_hint(sensor: Sensor, driver: &str) -> String {
    format!(
        "; the kernel driver `{driver}` owns this address. Unbind it (`echo 1-{:04x} | sudo tee /sys/bus/i2c/drivers/{driver}/unbind`) \
         or blacklist its module in /etc/modprobe.d/ and reboot; sensehat-monitor never force-binds a driver's address",
        sensor.address()
    )
}

fn errno(e: &I2CError) -> Option<i32> {
    match e.inner() {
        linux_embedded_hal::i2cdev::linux::LinuxI2CError::Errno(n) => Some(*n),
        linux_embedded_hal::i2cdev::linux::LinuxI2CError::Io(io) => io.raw_os_error(),
    }
}

const EBUSY: i32 = 16;
const EACCES: i32 = 13;
const ENOENT: i32 = 2;
const ENXIO: i32 = 6;
const EREMOTEIO: i32 = 121;

impl BusErrorHint for I2CError {
    fn hint(&self, sensor: Sensor) -> String {
        match errno(self) {
            Some(EBUSY) => {
                let driver = kernel_driver(1, sensor.address()).unwrap_or_else(|| "a kernel driver".into());
                owned_hint(sensor, &driver)
            }
            Some(EACCES) => format!("; {JOIN_GROUP}"),
            Some(ENOENT) => format!("; {ENABLE_I2C}"),
            Some(ENXIO) | Some(EREMOTEIO) => {
                "; nothing answered: is the Sense HAT seated on the 40-pin header? (`i2cdetect -y 1` lists what answers)".into()
            }
            _ => String::new(),
        }
    }
}

fn open_error(path: &str, sensor: Sensor, e: &io::Error) -> SensorError {
    let hint = match e.kind() {
        io::ErrorKind::NotFound => format!("; {path} does not exist: {ENABLE_I2C}"),
        io::ErrorKind::PermissionDenied => format!("; {JOIN_GROUP}"),
        _ => String::new(),
    };
    SensorError {
        sensor,
        bus: path.to_owned(),
        detail: format!("cannot open the bus: {e}"),
        hint,
    }
}

fn open_handle(path: &str, sensor: Sensor) -> Result<I2cdev, SensorError> {
    if let Some(driver) = bus_number(path).and_then(|n| kernel_driver(n, sensor.address())) {
        return Err(SensorError {
            sensor,
            bus: path.to_owned(),
            detail: "address in use by a kernel driver (EBUSY)".into(),
            hint: owned_hint(sensor, &driver),
        });
    }
    I2cdev::new(path).map_err(|e| {
        let io = match e {
            linux_embedded_hal::i2cdev::linux::LinuxI2CError::Io(io) => io,
            linux_embedded_hal::i2cdev::linux::LinuxI2CError::Errno(n) => {
                io::Error::from_raw_os_error(n)
            }
        };
        open_error(path, sensor, &io)
    })
}

/// Open and initialise the Sense HAT on `path`.
pub fn open(path: &str) -> Result<SenseHat<I2cdev, Delay>, SensorError> {
    let hts = open_handle(path, Sensor::Hts221)?;
    let lps = open_handle(path, Sensor::Lps25h)?;
    let acc = open_handle(path, Sensor::Lsm9ds1)?;
    SenseHat::init(path, hts, lps, acc, Delay)
}

#[cfg(test)]
mod tests {
    use super::*;

    // A missing bus device is an error that says how to enable I2C.
    #[test]
    fn missing_bus_says_how_to_enable_i2c() {
        let e = match open("/dev/i2c-does-not-exist") {
            Err(e) => e,
            Ok(_) => panic!("opened a bus that does not exist"),
        };
        let msg = e.to_string();
        assert!(msg.contains("/dev/i2c-does-not-exist"), "{msg}");
        assert!(msg.contains("raspi-config"), "{msg}");
        assert!(msg.contains("0x5f"), "{msg}");
    }

    #[test]
    fn parses_bus_numbers() {
        assert_eq!(bus_number("/dev/i2c-1"), Some(1));
        assert_eq!(bus_number("/dev/i2c-x"), None);
    }
}
