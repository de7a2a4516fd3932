//! Talking X11 to a session's display: is it answering (a real connection set-up, bounded in
//! time), and what does it show (the root window as PNG).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use x11rb::connection::Connection as _;
use x11rb::protocol::xproto::{ConnectionExt as _, ImageFormat};

use super::DesktopError;

/// The Unix socket of display `:n`.
pub fn socket_path(display: u32) -> PathBuf {
    PathBuf::from(format!("/tmp/.X11-unix/X{display}"))
}

/// The lock file of display `:n`.
pub fn lock_path(display: u32) -> PathBuf {
    PathBuf::from(format!("/tmp/.X{display}-lock"))
}

/// Whether display `:n` is free: no lock file, or a stale one (its process is gone: a server
/// killed with SIGKILL leaves it), which is removed with the socket.
pub fn display_free(display: u32) -> bool {
    let lock = lock_path(display);
    match std::fs::read_to_string(&lock) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => !socket_path(display).exists() || !answers(display, Duration::from_millis(100)),
        Err(_) => false,
        Ok(text) => {
            let alive = text.trim().parse::<u32>().is_ok_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists());
            if alive {
                return false;
            }
            let _ = std::fs::remove_file(&lock);
            let _ = std::fs::remove_file(socket_path(display));
            true
        }
    }
}

/// Whether display `:n` completes an X11 connection set-up within `timeout`: connects to its
/// socket, sends the set-up request (protocol 11.0, no authorisation: Xvfb allows local
/// clients) and reads the first byte of the reply (1: accepted). A stopped server accepts the
/// socket but never replies, so this answers `false` after `timeout`.
pub fn answers(display: u32, timeout: Duration) -> bool {
    let Ok(mut stream) = UnixStream::connect(socket_path(display)) else { return false };
    if stream.set_read_timeout(Some(timeout)).is_err() || stream.set_write_timeout(Some(timeout)).is_err() {
        return false;
    }
    // Byte order 'l' (little endian), unused, major 11, minor 0, no auth name, no auth data,
    // unused.
    let request = [b'l', 0, 11, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    if stream.write_all(&request).is_err() {
        return false;
    }
    let mut status = [0u8; 1];
    matches!(stream.read_exact(&mut status), Ok(()) if status[0] == 1)
}

/// The root window of display `:n` as a PNG (RGB, 8 bits a channel), and its size.
pub fn screenshot_png(display: u32, timeout: Duration) -> Result<(Vec<u8>, u16, u16), DesktopError> {
    let failed = |what: &str, e: &dyn std::fmt::Display| DesktopError::Display { display, reason: format!("{what}: {e}") };
    let stream = UnixStream::connect(socket_path(display)).map_err(|e| failed("connect", &e))?;
    stream.set_read_timeout(Some(timeout)).map_err(|e| failed("socket", &e))?;
    stream.set_write_timeout(Some(timeout)).map_err(|e| failed("socket", &e))?;
    let (stream, _peer) = x11rb::rust_connection::DefaultStream::from_unix_stream(stream).map_err(|e| failed("socket", &e))?;
    let conn = x11rb::rust_connection::RustConnection::connect_to_stream(stream, 0).map_err(|e| failed("X11 set-up", &e))?;
    let screen = conn.setup().roots.first().ok_or_else(|| failed("X11 set-up", &"no screen"))?;
    let (root, width, height, depth) = (screen.root, screen.width_in_pixels, screen.height_in_pixels, screen.root_depth);
    let image = conn
        .get_image(ImageFormat::Z_PIXMAP, root, 0, 0, width, height, !0)
        .map_err(|e| failed("GetImage", &e))?
        .reply()
        .map_err(|e| failed("GetImage", &e))?;
    let pixels = usize::from(width) * usize::from(height);
    // Depth 24 (and 32) come as 4 bytes a pixel, blue green red unused (little endian).
    if !(depth == 24 || depth == 32) || image.data.len() < pixels * 4 {
        return Err(failed("GetImage", &format!("depth {depth}, {} bytes for {pixels} pixels: only 24-bit displays are captured", image.data.len())));
    }
    let mut rgb = Vec::with_capacity(pixels * 3);
    for bgrx in image.data.chunks_exact(4).take(pixels) {
        rgb.extend_from_slice(&[bgrx[2], bgrx[1], bgrx[0]]);
    }
    let mut png_bytes = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut png_bytes, u32::from(width), u32::from(height));
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        encoder.set_compression(png::Compression::Fast);
        let mut writer = encoder.write_header().map_err(|e| failed("PNG", &e))?;
        writer.write_image_data(&rgb).map_err(|e| failed("PNG", &e))?;
    }
    Ok((png_bytes, width, height))
}
