//! The `ringcast` command line.

fn main() {
    println!("ringcast: server coming in the next commit");
}
